import json
from collections import Counter

import pytest

from seer.core.data import DEMO_DATA, load_concepts, load_prompts
from seer.core.splits import split_examples
from seer.errors import SeerError


def test_csv_and_jsonl_load_the_same(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}", "label": "ab"[i % 2]} for i in range(6)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.csv").write_text(
        "q,a,label\n" + "".join(f"{r['q']},{r['a']},{r['label']}\n" for r in rows)
    )
    a = load_concepts(str(tmp_path / "d.jsonl"), "label", "q", "a")
    b = load_concepts(str(tmp_path / "d.csv"), "label", "q", "a")
    assert a == b and len(a) == 6
    assert a[0] == {"prompt": "question 0", "response": "answer 0", "concept": "a"}


def test_missing_column_names_the_existing_ones(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\nhello,a\nworld,b\n")
    with pytest.raises(SeerError, match=r"no prompt column 'prompt'.*\['label', 'text'\]"):
        load_concepts(str(tmp_path / "d.csv"), "label", "prompt", None)


def test_split_is_seeded_stratified_and_disjoint(concept_file):
    examples = load_concepts(str(concept_file), "concept", "prompt", "response")
    train, test = split_examples(examples, 0.34, seed=3)
    again = split_examples(examples, 0.34, seed=3)
    assert (train, test) == again
    assert Counter(e["concept"] for e in test) == {"cooking": 2, "space": 2, "sports": 2}
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    assert split_examples(examples, 0.34, seed=4) != (train, test)


def test_max_per_concept_caps_each_concept(concept_file):
    examples = load_concepts(str(concept_file), "concept", "prompt", "response", max_per_concept=4)
    assert Counter(e["concept"] for e in examples) == {"cooking": 4, "space": 4, "sports": 4}


def test_excluded_prompts_are_dropped_before_the_cap(concept_file, tmp_path):
    examples = load_concepts(str(concept_file))
    dropped = [examples[0]["prompt"], examples[-1]["prompt"]]
    held = tmp_path / "eval.csv"
    held.write_text("prompt,other\n" + "".join(f'"  {p} ",x\n' for p in dropped), encoding="utf-8")
    assert load_prompts(str(held)) == dropped
    kept = load_concepts(str(concept_file), exclude_prompts=load_prompts(str(held)))
    assert len(kept) == len(examples) - 2
    assert not {ex["prompt"] for ex in kept} & set(dropped)
    with pytest.raises(SeerError, match="no 'question' column"):
        load_prompts(str(held), column="question")


def test_embedded_demo_data_is_do_not_answer():
    examples = load_concepts(DEMO_DATA, "concept", "prompt", None)
    assert len(examples) == 938  # 939 rows; one prompt is listed twice and kept once
    assert len({e["concept"] for e in examples}) == 5
    assert all(e["response"] is None for e in examples)
