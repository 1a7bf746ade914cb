import numpy as np
import pytest

from sbr_bench import significance as sig


def test_mean_std_over_seeds():
    out = sig.mean_std([{"MRR@20": 10.0, "HR@20": 50.0}, {"MRR@20": 12.0, "HR@20": 50.0}])
    assert out["MRR@20"] == {"mean": 11.0, "std": pytest.approx(np.sqrt(2.0)), "n": 2}
    assert out["HR@20"]["std"] == 0.0
    assert sig.mean_std([{"MRR@20": 7.0}])["MRR@20"] == {"mean": 7.0, "std": 0.0, "n": 1}


def test_per_example_values_follow_the_cutoff_and_ties():
    def rec(opt, pes):
        return {"optimistic": np.array(opt), "pessimistic": np.array(pes)}

    one = rec([1, 2, 20, 21, 1], [1, 2, 20, 21, 2])  # the last example ties for ranks 1-2
    assert sig.per_example("MRR@20", [one]).tolist() == pytest.approx([1.0, 0.5, 0.05, 0.0, 0.75])
    assert sig.per_example("HR@20", [one]).tolist() == [1, 1, 1, 0, 1]
    # averaged over seeds, per example
    both = sig.per_example("MRR@20", [rec([1, 30], [1, 30]), rec([2, 30], [2, 30])])
    assert both.tolist() == [0.75, 0.0]
    with pytest.raises(ValueError):
        sig.per_example("AUC@20", [one])


def test_holm_adjustment():
    adjusted = sig.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(previous, 1*0.04)
    assert adjusted == {"a": pytest.approx(0.03), "c": pytest.approx(0.06), "b": pytest.approx(0.06)}
    assert sig.holm({"a": 0.9, "b": 0.8}) == {"b": 1.0, "a": 1.0}


def test_large_difference_is_marked_and_best_bolded():
    rng = np.random.default_rng(0)
    strong = rng.uniform(0.4, 1.0, 2000)
    values = {"strong": strong, "weak": strong - rng.uniform(0.1, 0.3, 2000),
              "close": strong - rng.normal(0.0, 0.001, 2000) - 0.0001}
    out = sig.compare_to_best(values)
    assert out["best"] == "strong"
    weak = out["models"]["weak"]
    assert weak["mark"] == "**" and weak["t_p_holm"] < 0.01 and weak["wilcoxon_p_holm"] < 0.01
    assert out["models"]["strong"]["mark"] == ""
    assert out["best_significant"] == (out["models"]["close"]["t_p_holm"] < 0.01)


def test_small_noisy_difference_is_not_significant():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 30)
    out = sig.compare_to_best({"a": a, "b": a + rng.normal(0, 0.3, 30) * 0.1})
    loser = next(n for n in out["models"] if n != out["best"])
    assert out["models"][loser]["mark"] == "" and not out["best_significant"]


def test_identical_vectors_give_p_one_and_no_marks():
    v = np.array([1.0, 0.5, 0.0, 0.25])
    out = sig.compare_to_best({"x": v, "y": v.copy(), "z": v.copy()})
    for name, row in out["models"].items():
        assert row["mark"] == ""
        if not row["is_best"]:
            assert row["t_p"] == 1.0 and row["wilcoxon_p"] == 1.0 and row["note"] == "identical"
    assert not out["best_significant"]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_inputs_do_not_crash(n):
    out = sig.compare_to_best({"a": np.ones(n), "b": np.zeros(n)})
    assert set(out["models"]) == {"a", "b"}
    if n < 2:
        assert out["models"]["b"]["t_p"] == 1.0 and not out["best_significant"]


def test_constant_nonzero_difference_is_significant_for_the_t_test():
    out = sig.paired_tests(np.full(50, 0.5), np.full(50, 0.25))
    assert out["t_p"] == 0.0 and out["wilcoxon_p"] < 0.01


def test_single_model_and_empty_input():
    assert sig.compare_to_best({})["best"] is None
    only = sig.compare_to_best({"a": np.ones(5)})
    assert only["best"] == "a" and not only["best_significant"]
