-- Selection for the three-class toy: the two signal scores of the softmax
-- classifier as discriminants (the background score is 1 minus their sum)
-- and the event weight.
SELECT score_signal1, score_signal2, weight
FROM events
