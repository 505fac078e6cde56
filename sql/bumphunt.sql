-- Selection for the resonance search: the two signal scores of the
-- three-class classifier as discriminants, the event weight, and the
-- diphoton-like invariant mass for the mass window and the sideband fit.
SELECT score_signal1, score_signal2, weight, mass
FROM events
