-- Selection for a grid of cuts on the three-class toy. The two signal
-- scores of a softmax sum to at most 1, so a grid on both would leave the
-- upper right cells empty. Instead: the signal-1 score, and signal 2
-- against background, score_signal2 / (score_signal2 + score_bkg), which
-- spans [0, 1] whatever the signal-1 score is.
SELECT
    score_signal1,
    score_signal2 / (score_signal2 + score_bkg) AS signal2_vs_bkg,
    weight
FROM events
