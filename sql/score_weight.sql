-- Selection for the 1D toy: every event, its classifier score as the
-- discriminant and its weight. Add a WHERE clause to select events.
SELECT score, weight
FROM events
