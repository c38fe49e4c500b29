"""Evaluation metrics checked by hand, on a trained tiny model, and through `wofn evaluate`."""

from __future__ import annotations

import json
import math
import random

import pytest
from conftest import make_toy_pairs

from wofn import cli, evaluation, models, training


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# Six pairs; lengths are of the stripped texts. d = len(chosen) - len(rejected).
#   i  chosen        rejected  d    source  margin  correct
#   0  "aaaa"        "bb"      +2   a        2.0    1
#   1  "aa"          "bbbbb"   -3   a       -1.0    0
#   2  "aaa"         "bbb"      0   a        0.0    0.5  (tie)
#   3  "aaaaaa"      "b"       +5   b        0.5    1
#   4  "a"           "bbbb"    -3   b        3.0    1
#   5  "  aa  "      "bbb"     -1   b       -0.2    0    (6 raw chars, 2 stripped: shorter)
HAND_PAIRS = [
    {"prompt": "p", "chosen": "aaaa", "rejected": "bb", "source": "a"},
    {"prompt": "p", "chosen": "aa", "rejected": "bbbbb", "source": "a"},
    {"prompt": "p", "chosen": "aaa", "rejected": "bbb", "source": "a"},
    {"prompt": "p", "chosen": "aaaaaa", "rejected": "b", "source": "b"},
    {"prompt": "p", "chosen": "a", "rejected": "bbbb", "source": "b"},
    {"prompt": "p", "chosen": "  aa  ", "rejected": "bbb", "source": "b"},
]
HAND_MARGINS = [2.0, -1.0, 0.0, 0.5, 3.0, -0.2]


def test_metrics_by_hand():
    m = evaluation.metrics_from_margins(HAND_MARGINS, HAND_PAIRS, high_confidence_fraction=1 / 3,
                                        calibration_bins=2)
    exact = pytest.approx
    assert m["n"] == 6
    # (1 + 0 + 0.5 + 1 + 1 + 0) / 6 = 3.5 / 6
    assert m["accuracy"] == exact(3.5 / 6, abs=1e-12)
    # ceil(6 / 3) = 2 pairs with the largest |margin|: i=4 (3.0) and i=0 (2.0), both right
    assert m["high_confidence_n"] == 2 and m["high_confidence_fraction"] == 1 / 3
    assert m["high_confidence_accuracy"] == 1.0
    # (2 - 1 + 0 + 0.5 + 3 - 0.2) / 6 = 4.3 / 6
    assert m["mean_margin"] == exact(4.3 / 6, abs=1e-12)
    assert m["mean_confidence"] == exact(sum(_sig(x) for x in HAND_MARGINS) / 6, abs=1e-12)
    # chosen longer: i=0,3 -> 1, 1 -> 1.0; chosen shorter: i=1,4,5 -> 0, 1, 0 -> 1/3; i=2 left out
    # (1 + 1/3) / 2 = 2/3
    assert m["length_balanced_accuracy"] == exact(2 / 3, abs=1e-12)
    assert m["length_balanced_sides"] == 2
    assert (m["chosen_longer_accuracy"], m["chosen_longer_n"]) == (1.0, 2)
    assert m["chosen_shorter_accuracy"] == exact(1 / 3, abs=1e-12) and m["chosen_shorter_n"] == 3
    # longer wins: i=0,3 right, i=2 half -> 2.5/6; shorter wins: i=1,4,5 right, i=2 half -> 3.5/6
    assert m["longer_wins_accuracy"] == exact(2.5 / 6, abs=1e-12)
    assert m["shorter_wins_accuracy"] == exact(3.5 / 6, abs=1e-12)
    # ECE, 2 bins: [0.5, 0.75) and [0.75, 1]; sigmoid(|m|) >= 0.75 iff |m| >= ln 3 = 1.0986
    #   upper bin: i=0 p=sig(2)=0.880797, i=4 p=sig(3)=0.952574; correct 1, 1
    #     |1 - 0.916686| = 0.083314, weight 2/6
    #   lower bin: i=1 p=sig(1)=0.731059 c=0; i=2 p=0.5 c=0.5; i=3 p=sig(.5)=0.622459 c=1;
    #              i=5 p=sig(.2)=0.549834 c=0
    #     mean c = 1.5/4 = 0.375, mean p = 0.600838; |0.375 - 0.600838| = 0.225838, weight 4/6
    #   ECE = 2/6 * 0.083314 + 4/6 * 0.225838 = 0.027771 + 0.150559 = 0.178330
    upper = abs(1 - (_sig(2) + _sig(3)) / 2)
    lower = abs(1.5 / 4 - (_sig(1) + 0.5 + _sig(0.5) + _sig(0.2)) / 4)
    assert m["calibration_error"] == exact(2 / 6 * upper + 4 / 6 * lower, abs=1e-12)
    assert m["calibration_error"] == exact(0.178330, abs=1e-6)
    # source a: i=0,1,2 -> 1.5/3; longer {0}: 1, shorter {1}: 0 -> 0.5
    # source b: i=3,4,5 -> 2/3;   longer {3}: 1, shorter {4,5}: 0.5 -> 0.75
    assert m["by_source"] == {
        "a": {"n": 3, "accuracy": 0.5, "length_balanced_accuracy": 0.5},
        "b": {"n": 3, "accuracy": exact(2 / 3, abs=1e-12), "length_balanced_accuracy": 0.75},
    }
    json.dumps(m)  # plain JSON, ready for manifests


def test_high_confidence_ties_keep_input_order_and_edge_cases():
    pairs = [{"prompt": "p", "chosen": "x", "rejected": "y"}] * 2
    assert evaluation.metrics_from_margins([1.0, -1.0], pairs, 0.5)["high_confidence_accuracy"] == 1.0
    assert evaluation.metrics_from_margins([-1.0, 1.0], pairs, 0.5)["high_confidence_accuracy"] == 0.0
    # at least one pair, however small the fraction
    assert evaluation.metrics_from_margins([-1.0, 1.0], pairs, 0.01)["high_confidence_n"] == 1
    m = evaluation.metrics_from_margins([0.0, 0.0], pairs)
    # equal lengths everywhere: no length-balanced accuracy; no source: "unknown"; ties are half right
    assert m["length_balanced_accuracy"] is None and m["length_balanced_sides"] == 0
    assert m["chosen_longer_accuracy"] is None and m["chosen_shorter_accuracy"] is None
    assert m["chosen_longer_n"] == m["chosen_shorter_n"] == 0
    assert m["by_source"] == {"unknown": {"n": 2, "accuracy": 0.5, "length_balanced_accuracy": None}}
    assert m["calibration_error"] == 0.0 and m["mean_confidence"] == 0.5
    # only one length direction: that side's accuracy, flagged by length_balanced_sides
    one_side = [{"prompt": "p", "chosen": "long", "rejected": "s"}] * 4
    m = evaluation.metrics_from_margins([1.0, 1.0, 1.0, -1.0], one_side)
    assert m["length_balanced_accuracy"] == 0.75 and m["length_balanced_sides"] == 1
    assert m["chosen_longer_accuracy"] == 0.75 and m["chosen_shorter_accuracy"] is None
    with pytest.raises(ValueError, match="no evaluation pairs"):
        evaluation.metrics_from_margins([], [])
    with pytest.raises(ValueError, match="1 margins for 2 pairs"):
        evaluation.metrics_from_margins([1.0], pairs)
    with pytest.raises(ValueError, match="high_confidence_fraction"):
        evaluation.metrics_from_margins([1.0, 1.0], pairs, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        evaluation.metrics_from_margins([1.0, float("nan")], pairs)


def test_calibration_extremes_and_safe_sigmoid():
    pairs = [{"prompt": "p", "chosen": "x", "rejected": "y"}] * 3
    confident_right = evaluation.metrics_from_margins([50.0, 800.0, float("inf")], pairs)
    assert confident_right["calibration_error"] == pytest.approx(0.0, abs=1e-12)
    confident_wrong = evaluation.metrics_from_margins([-50.0, -800.0, float("-inf")], pairs)
    assert confident_wrong["calibration_error"] == pytest.approx(1.0, abs=1e-12)
    assert confident_wrong["mean_confidence"] == pytest.approx(0.0, abs=1e-12)
    assert confident_wrong["accuracy"] == 0.0


def test_length_only_judge_is_exactly_half_length_balanced():
    rng = random.Random(0)
    pairs = []
    for _ in range(40):
        a, b = "x" * rng.randint(1, 30), "y" * rng.randint(1, 30)
        pairs.append({"prompt": "p", "chosen": a, "rejected": b})
    pairs += [{"prompt": "p", "chosen": "long answer", "rejected": "no"},
              {"prompt": "p", "chosen": "no", "rejected": "long answer"}]  # both directions for sure
    length_margins = [float(len(p["chosen"]) - len(p["rejected"])) for p in pairs]
    m = evaluation.metrics_from_margins(length_margins, pairs)
    assert m["length_balanced_sides"] == 2
    assert m["length_balanced_accuracy"] == 0.5
    assert (m["chosen_longer_accuracy"], m["chosen_shorter_accuracy"]) == (1.0, 0.0)
    assert m["accuracy"] == m["longer_wins_accuracy"]


def test_format_table_puts_baselines_on_their_own_rows():
    m = evaluation.metrics_from_margins(HAND_MARGINS, HAND_PAIRS)
    results = [{"model": model, "revision": "r", "pairs": f, **m}
               for model in ("rm-one", "rm-two") for f in ("f1.jsonl", "f2.jsonl")]
    lines = evaluation.format_table(results).splitlines()
    assert lines[0].split()[:4] == ["model", "pairs", "n", "accuracy"]
    assert sum(line.startswith("[longer wins]") for line in lines) == 2
    assert sum(line.startswith("[shorter wins]") for line in lines) == 2
    rows = [line.split() for line in lines if line.startswith("rm-")]
    assert len(rows) == 4
    # chosen longer: 2 pairs, both right; chosen shorter: 3 pairs, 1 right
    assert rows[0][:7] == ["rm-one", "f1.jsonl", "6", "58.3%", "66.7%", "100.0%", "33.3%"]
    longer = next(line.split() for line in lines if line.startswith("[longer wins]"))
    assert longer[2:8] == ["f1.jsonl", "6", "41.7%", "50.0%", "100.0%", "0.0%"]


# --- a real (tiny) trained reward model -------------------------------------------------------


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("eval") / "rm"
    config = training.TrainConfig(epochs=8, batch_size=8, learning_rate=1e-3, max_length=48, seed=1)
    training.train_reward_model(models.TINY_BERT, make_toy_pairs(48, 0), config, out)
    return str(out)


def test_evaluate_trained_model(trained_rm):
    result = evaluation.evaluate(trained_rm, make_toy_pairs(40, 1))
    keys = {"model", "revision", "n", "accuracy", "mean_margin", "mean_confidence", "longer_wins_accuracy",
            "shorter_wins_accuracy", "high_confidence_accuracy", "high_confidence_n", "high_confidence_fraction",
            "calibration_error", "length_balanced_accuracy", "length_balanced_sides", "by_source"}
    assert keys <= set(result)
    assert result["n"] == 40 and result["accuracy"] >= 0.95
    assert result["high_confidence_n"] == 10 and result["high_confidence_accuracy"] == 1.0
    assert result["mean_margin"] > 0 and result["mean_confidence"] > 0.5
    assert result["length_balanced_sides"] == 2 and result["length_balanced_accuracy"] >= 0.9
    assert result["by_source"]["unknown"]["n"] == 40
    json.dumps(result)


def _write_jsonl(path, pairs) -> str:
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return str(path)


def test_cli_evaluate_table_json_and_output(trained_rm, tmp_path, capsys):
    f1 = _write_jsonl(tmp_path / "one.jsonl", make_toy_pairs(12, 3))
    f2 = _write_jsonl(tmp_path / "two.jsonl", make_toy_pairs(8, 4))

    assert cli.main(["evaluate", "--model", trained_rm, "--pairs", f1, "--pairs", f2, "--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines if line.startswith("[longer wins]")] == [f1, f2]
    assert [line.split()[2] for line in lines if line.startswith("[shorter wins]")] == [f1, f2]
    model_rows = [line.split() for line in lines if line.startswith(trained_rm)]
    assert [(row[1], row[2]) for row in model_rows] == [(f1, "12"), (f2, "8")]

    out_file = tmp_path / "results" / "all.json"
    assert cli.main(["evaluate", "--model", trained_rm, "--model", models.TINY_BERT, "--pairs", f1, "--pairs", f2,
                     "--max-pairs", "6", "--output", str(out_file)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    lines = [r for r in printed if "comparison" not in r]
    assert [(r["model"], r["pairs"], r["n"]) for r in lines] == [
        (trained_rm, f1, 6), (trained_rm, f2, 6), (models.TINY_BERT, f1, 6), (models.TINY_BERT, f2, 6)]
    assert json.loads(out_file.read_text()) == printed
    # the second model minus the first, per pairs file, on the same pairs
    comparisons = [r["comparison"] for r in printed if "comparison" in r]
    assert [(c["model"], c["baseline"], c["pairs"], c["n"]) for c in comparisons] == [
        (models.TINY_BERT, trained_rm, f1, 6), (models.TINY_BERT, trained_rm, f2, 6)]
    for c, untrained in zip(comparisons, [r for r in lines if r["model"] == models.TINY_BERT]):
        trained = next(r for r in lines if r["model"] == trained_rm and r["pairs"] == c["pairs"])
        assert c["accuracy"]["difference"] == pytest.approx(untrained["accuracy"] - trained["accuracy"])
        assert c["accuracy"]["low"] <= c["accuracy"]["difference"] <= c["accuracy"]["high"]
    assert lines[0]["by_source"] == {"one.jsonl": {"n": 6, "accuracy": lines[0]["accuracy"],
                                                   "length_balanced_accuracy": lines[0]["length_balanced_accuracy"]}}


def test_cli_evaluate_bad_input_exits_2(trained_rm, tmp_path, capsys):
    missing = str(tmp_path / "nope.jsonl")
    assert cli.main(["evaluate", "--model", trained_rm, "--pairs", missing]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    assert cli.main(["evaluate", "--model", trained_rm, "--pairs", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "rejected" in err
    good = _write_jsonl(tmp_path / "good.jsonl", make_toy_pairs(2, 0))
    assert cli.main(["evaluate", "--model", trained_rm, "--pairs", good, "--high-confidence-fraction", "0"]) == 2
    assert "--high-confidence-fraction" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", str(tmp_path / "no-model"), "--pairs", good]) == 2
    assert "no-model" in capsys.readouterr().err


def test_cli_evaluate_compares_seeds_of_one_model_seed_by_seed(trained_rm, tmp_path, capsys):
    pairs = _write_jsonl(tmp_path / "p.jsonl", make_toy_pairs(20, 6))
    assert cli.main(["evaluate", "--model", f"{trained_rm},{trained_rm}",
                     "--model", f"{models.TINY_BERT},{models.TINY_BERT}",
                     "--pairs", pairs, "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert (f"{models.TINY_BERT},{models.TINY_BERT} - {trained_rm},{trained_rm} on {pairs} "
            "(n=20, 2 seeds): accuracy") in out
    assert cli.main(["evaluate", "--model", f"{trained_rm},{trained_rm}", "--model", models.TINY_BERT,
                     "--pairs", pairs]) == 2
    assert "same number of seeds" in capsys.readouterr().err


def test_compare_pairs_seeds_in_order():
    pairs = [{"chosen": "aa", "rejected": "a"}, {"chosen": "a", "rejected": "aa"}] * 5
    base = [{"model": f"b{s}", "group": "base", "pairs": "f", "margins": [-1.0] * 10} for s in range(2)]
    student = [{"model": f"s{s}", "group": "student", "pairs": "f", "margins": [1.0] * 10} for s in range(2)]
    [row] = evaluation.compare(base + student, {"f": pairs})
    assert (row["model"], row["baseline"], row["seeds"], row["n"]) == ("student", "base", 2, 10)
    assert row["accuracy"]["difference"] == 1.0 and not row["accuracy"]["within_noise"]
    assert row["length_balanced_accuracy"]["difference"] == 1.0
    with pytest.raises(ValueError, match="1 seeds to compare with 2"):
        evaluation.compare(base + student[:1], {"f": pairs})
