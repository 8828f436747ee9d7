"""The report's rules on hand-made numbers: recommended weight, "no effect", step progress."""

from lorastudio.evaluation.report import recommend, step_progress

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)


def test_the_smallest_weight_reaching_ninety_percent_of_the_best_gain_is_recommended():
    concept = dict(zip(WEIGHTS, (0.30, 0.35, 0.60, 0.80, 0.82, 0.83)))
    keep = dict.fromkeys(WEIGHTS, 0.9)
    # best gain 0.53 at 1.25; 0.75 gains 0.50 >= 0.9 * 0.53 = 0.477, 0.5 gains only 0.30
    rec = recommend(concept, keep)
    assert rec["verdict"] == "recommended" and rec["recommended_weight"] == 0.75
    # 0.75 changes the base too much: the next weight that keeps it is taken
    rec = recommend(concept, {**keep, 0.75: 0.5})
    assert rec["recommended_weight"] == 1.0
    # nothing keeps the base
    rec = recommend(concept, dict.fromkeys(WEIGHTS, 0.5))
    assert rec["recommended_weight"] is None and rec["verdict"] == "changes the base"


def test_a_lora_that_moves_nothing_has_no_effect():
    concept = dict(zip(WEIGHTS, (0.30, 0.30, 0.31, 0.30, 0.32, 0.31)))
    rec = recommend(concept, dict.fromkeys(WEIGHTS, 1.0))
    assert rec["verdict"] == "no effect" and rec["recommended_weight"] is None
    assert "0.020" in rec["reason"]


def test_step_progress_names_the_earliest_step_as_good_as_the_last():
    out = step_progress({200: 0.50, 400: 0.80, 600: 0.85, 800: 0.86, 1000: 0.845})
    assert out["earliest_as_good_as_last"] == 600 and out["best_step"] == 800
    assert "step 600 was as good as step 1000" in out["note"] and "overfitting" not in out["note"]
    falling = step_progress({100: 0.5, 200: 0.9, 300: 0.7})
    assert "overfitting" in falling["note"] and falling["best_step"] == 200
    assert step_progress({})["steps"] == {}
