"""The bundled sample task: parse a Taiwanese postal address into JSON fields.

A row looks like this (the trainer appends EOS to the completion):

    {"prompt": "解析地址：臺北市大安區復興南路一段390號2樓\\n",
     "completion": "{\\"city\\":\\"臺北市\\",\\"district\\":\\"大安區\\",\\"road\\":\\"復興南路\\",...}"}

Every field keeps its marker (段, 巷, 弄, 號, 樓), so the address is exactly the concatenation of
the non-null fields. Stdlib only: the web process may import this to describe the sample dataset.

    python -m tools.sample_data --out assets/datasets/tw-address
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PROMPT_PREFIX = "解析地址："
FIELDS: tuple[str, ...] = ("city", "district", "road", "section", "lane", "alley", "number", "floor")

# city -> district -> road -> number of sections the road has (0: the road has no 段).
# Real names; the section counts are plausible rather than surveyed.
GEOGRAPHY: dict[str, dict[str, dict[str, int]]] = {
    "臺北市": {
        "大安區": {
            "復興南路": 2,
            "和平東路": 3,
            "敦化南路": 2,
            "新生南路": 3,
            "忠孝東路": 4,
            "仁愛路": 4,
            "信義路": 4,
            "辛亥路": 3,
            "安和路": 2,
            "通化街": 0,
            "臥龍街": 0,
        },
        "信義區": {
            "松仁路": 0,
            "松高路": 0,
            "基隆路": 1,
            "忠孝東路": 5,
            "信義路": 5,
            "松山路": 0,
            "永吉路": 0,
            "莊敬路": 0,
        },
        "中山區": {
            "中山北路": 3,
            "南京東路": 3,
            "民生東路": 2,
            "松江路": 0,
            "林森北路": 0,
            "建國北路": 3,
            "農安街": 0,
            "長安東路": 2,
        },
        "中正區": {"重慶南路": 3, "羅斯福路": 2, "忠孝西路": 1, "杭州南路": 2, "汀州路": 3, "延平南路": 0},
        "士林區": {"中正路": 0, "文林路": 0, "承德路": 4, "天母東路": 0, "至善路": 3, "福國路": 0},
        "內湖區": {"內湖路": 2, "成功路": 5, "瑞光路": 0, "港墘路": 0, "民權東路": 6, "康寧路": 3},
        "萬華區": {"西園路": 2, "康定路": 0, "艋舺大道": 0, "和平西路": 3, "環河南路": 2},
        "北投區": {"石牌路": 2, "中和街": 0, "大業路": 0, "光明路": 0, "承德路": 7},
    },
    "新北市": {
        "板橋區": {"文化路": 2, "中山路": 2, "縣民大道": 2, "民生路": 3, "四川路": 2, "漢生東路": 0},
        "新莊區": {"中正路": 0, "思源路": 0, "中華路": 3, "龍安路": 0, "新泰路": 0},
        "中和區": {"中和路": 0, "景平路": 0, "中山路": 3, "連城路": 0, "員山路": 0},
        "永和區": {"永和路": 2, "中正路": 0, "竹林路": 0, "福和路": 0, "永貞路": 0},
        "三重區": {"重新路": 5, "正義北路": 0, "三和路": 4, "集美街": 0, "龍門路": 0},
        "新店區": {"北新路": 3, "中正路": 0, "民權路": 0, "安康路": 3, "寶橋路": 0},
        "淡水區": {"中正路": 2, "學府路": 0, "英專路": 0, "民權路": 0, "中山北路": 2},
    },
    "桃園市": {
        "桃園區": {"中正路": 0, "復興路": 0, "大興西路": 3, "經國路": 0, "民生路": 0, "成功路": 3},
        "中壢區": {"中大路": 0, "環北路": 0, "中央西路": 2, "元化路": 0, "新生路": 0, "延平路": 0},
        "龜山區": {"文化一路": 0, "萬壽路": 2, "復興一路": 0},
    },
    "臺中市": {
        "西屯區": {"臺灣大道": 4, "文心路": 3, "市政路": 0, "福星路": 0, "河南路": 3, "惠來路": 2},
        "北區": {"三民路": 3, "進化路": 0, "太原路": 1, "健行路": 0, "五權路": 0, "英才路": 0},
        "南屯區": {"公益路": 2, "五權西路": 3, "大墩路": 0, "向上路": 3, "文心南路": 0},
        "北屯區": {"崇德路": 3, "北屯路": 0, "文心路": 4, "東山路": 2, "昌平路": 2},
        "西區": {"民權路": 0, "美村路": 1, "公益路": 1, "五權西路": 1},
    },
    "臺南市": {
        "東區": {"東寧路": 0, "長榮路": 2, "林森路": 2, "崇學路": 0, "大學路": 0},
        "中西區": {"中正路": 0, "民生路": 2, "海安路": 2, "西門路": 2, "府前路": 1},
        "永康區": {"中華路": 0, "中正南路": 0, "大灣路": 0, "永大路": 2},
        "安平區": {"安平路": 0, "健康路": 3, "永華路": 2, "運河路": 0},
    },
    "高雄市": {
        "苓雅區": {"四維三路": 0, "中正一路": 0, "三多一路": 0, "光華一路": 0, "青年一路": 0},
        "前鎮區": {"中山二路": 0, "中華五路": 0, "三多三路": 0, "擴建路": 0, "瑞隆路": 0},
        "左營區": {"博愛二路": 0, "明誠二路": 0, "自由二路": 0, "文自路": 0, "裕誠路": 0},
        "三民區": {"建工路": 0, "九如一路": 0, "大順二路": 0, "民族一路": 0, "澄清路": 0},
        "鳳山區": {"光復路": 2, "中山西路": 0, "五甲二路": 0, "青年路": 2, "建國路": 3},
        "鼓山區": {"美術東二路": 0, "明華路": 0, "蓮海路": 0, "中華一路": 0},
    },
    "基隆市": {
        "仁愛區": {"愛一路": 0, "仁一路": 0, "忠三路": 0},
        "中正區": {"中正路": 0, "義一路": 0, "信一路": 0, "北寧路": 0},
        "七堵區": {"明德一路": 0, "福五街": 0},
    },
    "新竹市": {
        "東區": {"光復路": 2, "建中路": 0, "關新路": 0, "民族路": 0, "食品路": 0},
        "北區": {"中正路": 0, "經國路": 2, "北大路": 0, "中華路": 2},
    },
    "新竹縣": {
        "竹北市": {"光明六路": 0, "縣政九路": 0, "中正西路": 0, "莊敬北路": 0, "文興路": 1},
        "竹東鎮": {"長春路": 3, "東林路": 0},
    },
    "苗栗縣": {"苗栗市": {"中正路": 0, "為公路": 0, "府前路": 0}},
    "彰化縣": {
        "彰化市": {"中山路": 3, "民族路": 0, "中正路": 2, "光復路": 0},
        "員林市": {"中山路": 2, "光明街": 0, "三民東街": 0},
    },
    "南投縣": {"南投市": {"中興路": 0, "三和三路": 0}, "埔里鎮": {"中山路": 3, "西安路": 2}},
    "雲林縣": {"斗六市": {"大學路": 3, "雲林路": 2, "中山路": 0}},
    "嘉義市": {
        "東區": {"民權路": 0, "忠孝路": 0, "垂楊路": 0, "民族路": 0},
        "西區": {"友愛路": 0, "中山路": 0, "北港路": 0},
    },
    "嘉義縣": {"民雄鄉": {"建國路": 3, "中樂路": 0}},
    "屏東縣": {"屏東市": {"自由路": 0, "中正路": 0, "民生路": 0, "廣東路": 0}, "潮州鎮": {"新生路": 0}},
    "宜蘭縣": {
        "宜蘭市": {"中山路": 3, "神農路": 2, "校舍路": 0},
        "羅東鎮": {"興東路": 0, "公正路": 0, "中正北路": 0},
    },
    "花蓮縣": {
        "花蓮市": {"中山路": 0, "中華路": 0, "林森路": 0, "國聯一路": 0},
        "吉安鄉": {"中山路": 3, "南濱路": 1},
    },
    "臺東縣": {"臺東市": {"中華路": 2, "更生路": 0, "正氣路": 0, "博愛路": 0}},
    "澎湖縣": {"馬公市": {"中正路": 0, "三多路": 0, "光復路": 0}},
}

_CHINESE_DIGITS = "一二三四五六七八九"
# Draw district first and city with it, so a city with many districts shows up more often, as in life.
_DISTRICTS: list[tuple[str, str]] = [(city, district) for city, ds in GEOGRAPHY.items() for district in ds]


def _small_number(rng: random.Random, high: int) -> int:
    """A house-style number in 1..high, skewed small: most buildings sit low on a road."""
    value = 1 + int(rng.expovariate(5.0 / high))
    return value if value <= high else rng.randint(1, high)


def _floor(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.08:
        return f"地下{rng.randint(1, 2)}樓"
    level = _small_number(rng, 25)
    if roll < 0.22:
        return f"{level}樓之{rng.randint(1, 9)}"
    return f"{level}樓"


def random_fields(rng: random.Random) -> dict[str, str | None]:
    """One address as its eight fields (None where the part is absent), in FIELDS order."""
    city, district = rng.choice(_DISTRICTS)
    road, sections = rng.choice(sorted(GEOGRAPHY[city][district].items()))
    lane = f"{_small_number(rng, 400)}巷" if rng.random() < 0.35 else None
    number = _small_number(rng, 600)
    return {
        "city": city,
        "district": district,
        "road": road,
        "section": f"{_CHINESE_DIGITS[rng.randrange(sections)]}段" if sections else None,
        "lane": lane,
        "alley": f"{_small_number(rng, 30)}弄" if lane and rng.random() < 0.4 else None,
        "number": f"{number}之{rng.randint(1, 9)}號" if rng.random() < 0.15 else f"{number}號",
        "floor": _floor(rng) if rng.random() < 0.65 else None,
    }


def format_address(fields: dict[str, str | None]) -> str:
    """The address as written: the non-null fields joined in FIELDS order."""
    return "".join(fields[name] or "" for name in FIELDS)


def format_row(fields: dict[str, str | None]) -> dict[str, str]:
    completion = json.dumps({name: fields[name] for name in FIELDS}, ensure_ascii=False, separators=(",", ":"))
    return {"prompt": f"{PROMPT_PREFIX}{format_address(fields)}\n", "completion": completion}


def parse_fields(completion: str) -> dict[str, str | None]:
    """Read a completion back into fields; ValueError says what is wrong (for scoring model output)."""
    try:
        data = json.loads(completion)
    except json.JSONDecodeError as exc:
        raise ValueError(f"completion is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"completion must be a JSON object, got {type(data).__name__}")
    if tuple(data) != FIELDS:
        raise ValueError(f"completion keys must be {list(FIELDS)} in that order, got {list(data)}")
    for name, value in data.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"field `{name}` must be a string or null, got {value!r}")
    return data


def generate_rows(n: int, *, seed: int) -> list[dict[str, str]]:
    """n rows with distinct addresses; the same seed always gives the same rows."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise ValueError(f"could not draw {n} distinct addresses; ask for fewer rows")
        row = format_row(random_fields(rng))
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    return rows


def dataset_splits(
    *, n_train: int = 2000, n_eval: int = 200, seed: int = 1234
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, eval) drawn together, so no eval address appears in train."""
    rows = generate_rows(n_train + n_eval, seed=seed)
    return rows[:n_train], rows[n_train:]


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_sample_dataset(out_dir: Path, *, n_train: int = 2000, n_eval: int = 200, seed: int = 1234) -> dict[str, Path]:
    """Write train.jsonl and eval.jsonl under out_dir, and the preference pairs built from them
    (preference.jsonl from train, preference_eval.jsonl from eval); returns {split: path}."""
    # Imported here: tools.sample_pairs builds on this module, so a top-level import would be circular.
    from tools.sample_pairs import preference_pairs

    out_dir.mkdir(parents=True, exist_ok=True)
    train, eval_ = dataset_splits(n_train=n_train, n_eval=n_eval, seed=seed)
    splits = {
        "train": train,
        "eval": eval_,
        "preference": preference_pairs(train),
        "preference_eval": preference_pairs(eval_),
    }
    paths = {split: out_dir / f"{split}.jsonl" for split in splits}
    for split, rows in splits.items():
        _write_jsonl(paths[split], rows)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the Taiwanese address parsing sample dataset.")
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for train.jsonl, eval.jsonl and the preference pairs"
    )
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    paths = write_sample_dataset(args.out, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
