import json
from pathlib import Path

import pytest

from tools.sample_data import (
    FIELDS,
    PROMPT_PREFIX,
    format_address,
    generate_rows,
    parse_fields,
    write_sample_dataset,
)
from tools.sample_pairs import preference_pairs

DATASET_DIR = Path(__file__).resolve().parents[2] / "assets" / "datasets" / "tw-address"


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    assert generate_rows(50, seed=7) == generate_rows(50, seed=7)
    assert generate_rows(50, seed=7) != generate_rows(50, seed=8)


def test_rows_have_distinct_addresses() -> None:
    rows = generate_rows(500, seed=3)
    assert len({row["prompt"] for row in rows}) == 500


def test_every_completion_has_the_eight_keys_in_order_and_spells_the_prompt() -> None:
    for row in generate_rows(1000, seed=11):
        assert list(row) == ["prompt", "completion"]
        fields = json.loads(row["completion"])
        assert tuple(fields) == FIELDS
        assert row["completion"] == json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        assert row["prompt"] == f"{PROMPT_PREFIX}{format_address(fields)}\n"
        assert row["prompt"].removeprefix(PROMPT_PREFIX).removesuffix("\n") == "".join(
            value for value in fields.values() if value is not None
        )


def test_addresses_vary_like_real_ones() -> None:
    fields = [parse_fields(row["completion"]) for row in generate_rows(1000, seed=5)]
    for name in ("section", "lane", "alley", "floor"):
        present = sum(f[name] is not None for f in fields)
        assert 0 < present < len(fields), f"`{name}` should be present in some rows and absent in others"
    assert all(f["city"] and f["district"] and f["road"] and f["number"] for f in fields)
    assert all(f["alley"] is None or f["lane"] is not None for f in fields), "an alley sits off a lane"
    assert any("之" in f["number"] for f in fields if f["number"])
    floors = [f["floor"] for f in fields if f["floor"]]
    assert any(floor.startswith("地下") for floor in floors)
    assert any("樓之" in floor for floor in floors)
    assert {f["section"] for f in fields if f["section"]} <= {f"{c}段" for c in "一二三四五六七八九"}


def test_parse_fields_names_the_problem() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_fields('{"city":')
    with pytest.raises(ValueError, match="in that order"):
        parse_fields('{"district":"大安區","city":"臺北市"}')
    row = generate_rows(1, seed=0)[0]
    assert tuple(parse_fields(row["completion"])) == FIELDS


def test_committed_dataset_equals_a_fresh_generation(tmp_path: Path) -> None:
    paths = write_sample_dataset(tmp_path)
    for split in ("train", "eval"):
        committed = DATASET_DIR / f"{split}.jsonl"
        assert committed.read_bytes() == paths[split].read_bytes(), (
            f"{committed} is stale: run `python -m tools.sample_data --out assets/datasets/tw-address`"
        )


def test_committed_splits_are_sized_and_disjoint() -> None:
    train = _read_jsonl(DATASET_DIR / "train.jsonl")
    eval_ = _read_jsonl(DATASET_DIR / "eval.jsonl")
    assert (len(train), len(eval_)) == (2000, 200)
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in eval_}
    for row in train + eval_:
        assert tuple(parse_fields(row["completion"])) == FIELDS


def test_committed_preference_pairs_equal_a_fresh_generation_and_leave_the_sft_files_alone(tmp_path: Path) -> None:
    before = {split: (DATASET_DIR / f"{split}.jsonl").read_bytes() for split in ("train", "eval")}
    paths = write_sample_dataset(tmp_path)
    for split in ("preference", "preference_eval"):
        committed = DATASET_DIR / f"{split}.jsonl"
        assert committed.read_bytes() == paths[split].read_bytes(), (
            f"{committed} is stale: run `python -m tools.sample_data --out assets/datasets/tw-address`"
        )
    # Adding the pairs to the generator must not change a byte of the SFT sample people already trained on.
    for split, data in before.items():
        assert paths[split].read_bytes() == data


def test_pairs_come_from_their_own_split_and_never_prefer_an_answer_to_itself() -> None:
    for sft_name, pair_name, size in (("train", "preference", 2000), ("eval", "preference_eval", 200)):
        rows = _read_jsonl(DATASET_DIR / f"{sft_name}.jsonl")
        pairs = _read_jsonl(DATASET_DIR / f"{pair_name}.jsonl")
        assert len(pairs) == size
        for row, pair in zip(rows, pairs, strict=True):
            assert list(pair) == ["prompt", "chosen", "rejected"]
            assert (pair["prompt"], pair["chosen"]) == (row["prompt"], row["completion"])
            assert pair["rejected"] != pair["chosen"]


def test_each_rejected_answer_is_one_of_the_three_corruptions_in_turn() -> None:
    rows = generate_rows(300, seed=9)
    pairs = preference_pairs(rows)
    assert pairs == preference_pairs(rows)
    for i, pair in enumerate(pairs):
        chosen = parse_fields(pair["chosen"])
        rejected = json.loads(pair["rejected"])
        if i % 3 == 0:
            assert rejected == {name: chosen[name] for name in ("city", "district", "road")}
        elif i % 3 == 1:
            assert rejected == {**chosen, "number": None, "floor": None}
        else:
            assert tuple(rejected) == FIELDS
            assert rejected["district"] != chosen["district"]
            assert {**rejected, "district": chosen["district"]} == chosen
            assert rejected["district"] in {parse_fields(row["completion"])["district"] for row in rows}


def test_pairs_refuse_rows_that_all_share_one_district() -> None:
    row = generate_rows(1, seed=0)[0]
    with pytest.raises(ValueError, match="same district"):
        preference_pairs([row, row, row])
