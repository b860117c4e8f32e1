"""Data curation (megatron_qwen/curate, tools/curate.py): each step against planted cases whose answer is
known by construction, the whole pipeline in one command, and the slurm job scripts without slurm."""

import gzip
import itertools
import json
import os
import random
import subprocess
import sys

import pytest
from conftest import load_tool
from slurm_fakes import write_exe

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.curate import extract, quality, upsample
from megatron_qwen.curate.fuzzy import FuzzySettings, MinhashSignature
from megatron_qwen.curate.pipeline import (
    FOLDERS,
    CurateConfig,
    ExecutorSettings,
    build_stages,
    make_executors,
    run,
    stage_stats,
)
from megatron_qwen.curate.text import normalize_text, tokens
from megatron_qwen.data.shards import read_index_counts

curate_cli = load_tool("curate")

VOCAB = ["".join(letters) for letters in itertools.islice(itertools.product("etaoinshrdlu", repeat=5), 20000)]
HAN = [chr(c) for c in range(0x4E00, 0x4E00 + 6000)]
COMMON = ("people water garden yellow market river mountain school teacher family morning evening window kitchen "
          "summer winter children history country village letter station doctor friend animal forest island "
          "bridge mother father number picture question answer weather holiday").split()


def english(rng, n):
    return [rng.choice(VOCAB) for _ in range(n)]


def write_jsonl_gz(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_folder(folder):
    docs = []
    for root, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            if name.endswith(".jsonl.gz"):
                with gzip.open(os.path.join(root, name), "rt", encoding="utf-8") as f:
                    docs += [json.loads(line) for line in f]
    return docs


def run_steps(cfg, steps):
    stages = build_stages(cfg, steps)
    run(make_executors(stages, cfg.output, ExecutorSettings(workers=1)))
    return stages


def counts(cfg, stage):
    """The stage's statistics, all pipeline steps' keys merged (a key's total)."""
    merged = {}
    for step in stage_stats(cfg.output, stage):
        for key, value in step["stats"].items():
            merged[key] = merged.get(key, 0) + (value["total"] if isinstance(value, dict) else value)
    return merged


def full_width(text):
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in text)


# --- exact dedup -----------------------------------------------------------------------------------------
def test_exact_dedup_finds_case_whitespace_and_width_variants(tmp_path):
    rng = random.Random(1)
    originals = [" ".join(english(rng, 40)) + ", the end." for _ in range(30)]
    # near misses that must survive: one word changed, a digit changed
    survivors = originals + [originals[0].replace(originals[0].split()[3], "different"), originals[1] + " 7"]
    planted = [originals[2].upper(), "  " + originals[3].replace(" ", " \n\t "), full_width(originals[4]),
               full_width(originals[5].title()), originals[6].replace(",", " ,").replace(".", " . ")]
    records = [{"text": t, "id": f"keep{i}"} for i, t in enumerate(survivors)]
    records += [{"text": t, "id": f"dup{i}"} for i, t in enumerate(planted)]
    rng.shuffle(records[len(survivors):])
    write_jsonl_gz(str(tmp_path / "raw" / "web.jsonl.gz"), records)
    cfg = CurateConfig(inputs=[str(tmp_path / "raw")], output=str(tmp_path / "out"))
    run_steps(cfg, ("extract", "exact"))
    kept = sorted(d["id"] for d in read_folder(cfg.folder(FOLDERS["exact"])))
    assert kept == sorted(f"keep{i}" for i in range(len(survivors)))  # every variant found, nothing else
    assert normalize_text(full_width("Ab, C!")) == "ab c"


# --- fuzzy dedup -----------------------------------------------------------------------------------------
def shingles_of(text, n=5):
    t = tokens(text)
    return {tuple(t[i:i + n]) for i in range(len(t) - n + 1)}


def jaccard(a, b):
    sa, sb = shingles_of(a), shingles_of(b)
    return len(sa & sb) / len(sa | sb)


LEVELS = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def near_duplicate(rng, words, target, joiner, alphabet, n=5):
    """A copy of `words` with one contiguous block replaced, the block's length chosen so that the
    shingle-set Jaccard is `target`: s shingles each, m+n-1 of them changed -> J = (s-m-n+1)/(s+m+n-1)."""
    s = len(words) - n + 1
    m = max(1, round((s * (1 - target) / (1 + target)) - (n - 1)))
    start = rng.randrange(0, len(words) - m)
    return joiner.join(words[:start] + [rng.choice(alphabet) for _ in range(m)] + words[start + m:])


def test_shingle_hashes_one_per_distinct_ngram(tmp_path):
    step = MinhashSignature(str(tmp_path), FuzzySettings())
    for text in (" ".join(english(random.Random(0), 300) * 2), "".join(random.Random(1).choices(HAN[:50], k=400))):
        assert step.get_shingles(text).shape == (len(shingles_of(text)), 1)
    assert step.get_shingles("four words only here").size == 0


def test_fuzzy_dedup_recall_and_false_positives(tmp_path):
    rng = random.Random(2)
    records, pairs = [], []
    for level in LEVELS:
        for k in range(24):
            chinese = k % 2 == 1  # half the pairs Chinese: character shingles
            alphabet, joiner = (HAN, "") if chinese else (VOCAB, " ")
            words = [rng.choice(alphabet) for _ in range(300)]
            a, b = joiner.join(words), near_duplicate(rng, words, level, joiner, alphabet)
            ia, ib = f"{level}-{k}-a", f"{level}-{k}-b"
            records += [{"text": a, "id": ia}, {"text": b, "id": ib}]
            pairs.append((jaccard(a, b), "zh" if chinese else "en", ia, ib))
    rng.shuffle(records)
    half = len(records) // 2  # two tasks: pairs also cross task files
    write_jsonl_gz(str(tmp_path / "out" / FOLDERS["exact"] / "00000.jsonl.gz"), records[:half])
    write_jsonl_gz(str(tmp_path / "out" / FOLDERS["exact"] / "00001.jsonl.gz"), records[half:])
    cfg = CurateConfig(inputs=[], output=str(tmp_path / "out"), fuzzy=FuzzySettings(threshold=0.8), tasks=2)
    run_steps(cfg, ("fuzzy",))
    kept = {d["id"] for d in read_folder(cfg.folder(FOLDERS["fuzzy"]))}
    assert len(kept) >= len(records) - len(pairs)  # at most one document of a pair goes
    found = [(j, lang, not (a in kept and b in kept)) for j, lang, a, b in pairs]
    print("\nplanted Jaccard   pairs   detected (en / zh)")
    for level in LEVELS:
        rows = [(lang, hit) for j, lang, hit in found if abs(j - level) < 0.025]
        by = {lang: [h for la, h in rows if la == lang] for lang in ("en", "zh")}
        print(f"  {level:.2f}           {len(rows):3d}     " +
              " / ".join(f"{sum(v) / len(v):.2f}" if v else "-" for v in by.values()))
    above = [hit for j, _, hit in found if j >= 0.85]
    below = [hit for j, _, hit in found if j <= 0.7]
    recall, fpr = sum(above) / len(above), sum(below) / len(below)
    print(f"recall (J >= 0.85): {recall:.3f} over {len(above)} pairs; false positive rate (J <= 0.70): {fpr:.3f} "
          f"over {len(below)} pairs")
    assert len(above) >= 60 and len(below) >= 60
    assert recall >= 0.95 and fpr <= 0.05


# --- decontamination -------------------------------------------------------------------------------------
def test_decontamination_removes_13_gram_keeps_12_gram(tmp_path):
    rng = random.Random(3)
    question = english(rng, 30)
    zh_question = [rng.choice(HAN) for _ in range(30)]
    evals = tmp_path / "evals"
    evals.mkdir()
    (evals / "mathqa.jsonl").write_text(json.dumps({"question": " ".join(question[:20]),
                                                    "answer": " ".join(question[20:])}) + "\n")
    (evals / "ceval.jsonl").write_text(json.dumps({"question": "".join(zh_question), "choices": ["A", "B"]},
                                                  ensure_ascii=False) + "\n")

    def embed(words, joiner=" "):
        return " ".join(english(rng, 50)) + " " + joiner.join(words) + " " + " ".join(english(rng, 50))

    docs = {
        "en13": embed([w.upper() for w in question[10:23]]),  # crosses question/answer; case does not matter
        "en12": embed(question[3:15]),
        "zh13": embed(zh_question[5:18], ""),
        "zh12": embed(zh_question[5:17], ""),
        "clean": embed(english(rng, 40)),
    }
    write_jsonl_gz(str(tmp_path / "out" / FOLDERS["quality"] / "00000.jsonl.gz"),
                   [{"text": t, "id": i} for i, t in docs.items()])
    cfg = CurateConfig(inputs=[], output=str(tmp_path / "out"), eval_data=[str(evals)], tasks=1)
    run_steps(cfg, ("decont",))
    kept = sorted(d["id"] for d in read_folder(cfg.folder(FOLDERS["decont"])))
    assert kept == ["clean", "en12", "zh12"]
    stats = counts(cfg, "decont")
    assert stats["contaminated_mathqa"] == 1 and stats["contaminated_ceval"] == 1


# --- quality rules ---------------------------------------------------------------------------------------
def test_quality_rules_count_each_removal_by_rule(tmp_path):
    rng = random.Random(4)
    stop = "the of and to with that have be".split()

    def prose(n=80):
        return " ".join(rng.choice(stop) if i % 4 == 0 else rng.choice(["water", "garden", "yellow", "market"]) + str(i)
                        for i in range(n))

    def prose_lines(lines=10, words=12):
        return "\n".join(" ".join(english(rng, words)) + " the and of" for _ in range(lines))

    planted = {
        "too_few_words": "the and of with a short note",
        "mean_word_length_low": " ".join(["a", "b", "c", "the", "of"] * 30),
        "symbol_ratio": prose() + " " + "#$|=©" * 80,
        "digit_ratio": prose() + " " + " ".join(str(rng.randrange(10**9)) for _ in range(200)),
        "duplicate_lines": "\n".join([prose(12)] * 8 + [prose(12) for _ in range(4)]),
        "bullet_lines": "\n".join("- " + " ".join(english(rng, 8)) + " the of" for _ in range(20)),
        "ellipsis_lines": "\n".join(" ".join(english(rng, 8)) + " the of ..." for _ in range(20)),
        "stop_words": " ".join(english(rng, 100)),
    }
    good = {f"good{i}": prose_lines() for i in range(3)}
    good["good_zh"] = "".join("的了是"[i % 3] if i % 8 == 0 else rng.choice(HAN) for i in range(300))
    rules = quality.load_rules()
    for rule, text in planted.items():  # each planted text fails its rule first
        assert quality.failed_rule(text, rules["default"]) == rule
    for text in list(good.values())[:-1]:
        assert quality.failed_rule(text, rules["default"]) is None
    assert quality.failed_rule(good["good_zh"], rules["default"]) == "stop_words"  # English stop words
    assert quality.failed_rule(good["good_zh"], rules["zh"]) is None
    records = [{"text": t, "id": k} for k, t in {**planted, **good}.items()]
    records[-1]["lang"] = "zh"  # judged by the zh section
    write_jsonl_gz(str(tmp_path / "out" / FOLDERS["fuzzy"] / "00000.jsonl.gz"), records)
    cfg = CurateConfig(inputs=[], output=str(tmp_path / "out"), tasks=1)
    run_steps(cfg, ("quality",))
    assert sorted(d["id"] for d in read_folder(cfg.folder(FOLDERS["quality"]))) == sorted(good)
    stats = counts(cfg, "quality")
    assert {k[len("dropped_"):]: v for k, v in stats.items() if k.startswith("dropped_")} == dict.fromkeys(planted, 1)
    # the model-based hook: a scorer and a minimum from the config
    assert quality.failed_rule(good["good0"], quality.QualityRules(min_score=0.5), score=lambda t: 0.2) == "model_score"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"default": {"min_wrods": 3}}))
    with pytest.raises(ConfigError, match="min_wrods"):
        quality.load_rules(str(bad))


# --- upsampling ------------------------------------------------------------------------------------------
def test_upsampling_repeats_by_weight():
    ids = [f"doc{i}" for i in range(4000)]
    for weight in (0.0, 1.0, 2.0, 0.3, 2.5):
        total = sum(upsample.copies(weight, i) for i in ids)
        assert abs(total / len(ids) - weight) < 0.03, (weight, total)
        assert all(int(weight) <= upsample.copies(weight, i) <= int(weight) + 1 for i in ids[:100])
    assert upsample.parse_weights(["wiki=2.5", "web=0"]) == {"wiki": 2.5, "web": 0.0}
    with pytest.raises(ConfigError, match="SOURCE=WEIGHT"):
        upsample.parse_weights(["wiki"])


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "trafilatura", None)
    with pytest.raises(ImportError, match=r"megatron-qwen\[curate\]"):
        extract.make_extractor("trafilatura")


# --- the whole pipeline ----------------------------------------------------------------------------------
def test_whole_pipeline_one_command(tmp_path, capsys):
    rng = random.Random(5)

    def page(n):  # English enough for language ID, random enough that pages share no 5-gram
        return "\n".join(" ".join(rng.choice(COMMON) for _ in range(12)) + " the of and." for _ in range(n))

    web = [{"text": page(8), "id": f"web{i}"} for i in range(12)]
    web.append({"text": web[0]["text"].upper(), "id": "exact_dup"})
    web.append({"text": web[1]["text"] + " extra", "id": "near_dup"})
    web.append({"text": "too short", "id": "short"})
    evalq = english(rng, 20)
    web.append({"text": page(4) + " " + " ".join(evalq) + " " + page(4), "id": "contaminated"})
    html = [{"html": f"<html><body><nav>Home About Contact</nav><article><p>{page(8)}</p></article>"
                     f"<footer>copyright</footer></body></html>", "id": f"html{i}"} for i in range(3)]
    raw = tmp_path / "raw"
    write_jsonl_gz(str(raw / "web.jsonl.gz"), web)
    write_jsonl_gz(str(raw / "wiki.jsonl.gz"), html)
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": " ".join(evalq)}) + "\n")
    out = tmp_path / "out"
    rc = curate_cli.main(["run", "--input", str(raw), "--output", str(out), "--eval-data", str(tmp_path / "eval.jsonl"),
                          "--upsample", "wiki=2", "--workers", "1"])
    assert rc == 0
    report = capsys.readouterr().out
    for line in ("exact_filter", "fuzzy_filter", "dropped_too_few_words 1", "contaminated_eval 1", "copies_wiki 6"):
        assert line in report, report
    docs = read_folder(out / FOLDERS["upsample"])
    assert sorted(d["id"] for d in docs) == sorted([f"web{i}" for i in range(12)] + [f"html{i}" for i in range(3)] * 2)
    assert all("Home About" not in d["text"] and d["lang"] == "en" for d in docs)
    shard_docs = [read_index_counts(str(out / "shards" / f"curated_{name}_text_document"))[0]
                  for name in ("web-00000", "wiki-00001")]
    assert shard_docs == [12, 6]
    assert "--data-path" in report


def test_bad_input_is_one_line_error(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "web.jsonl.gz").write_bytes(gzip.compress(b'{"text": "hello"}\n')[:-12])  # truncated gzip
    assert curate_cli.main(["extract", "--input", str(raw), "--output", str(tmp_path / "out"), "--workers", "1"]) == 2
    assert curate_cli.main(["run", "--output", str(tmp_path / "out")]) == 2
    assert curate_cli.main(["quality", "--output", str(tmp_path / "out"), "--quality-scorer", "json:loads"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("curate: error:")]
    assert len(errors) == 3, errors
    assert "task logs" in errors[0] and "--input is required" in errors[1] and "min_score" in errors[2]


def test_input_with_no_document_is_one_line_error(tmp_path, capsys):
    """Only malformed JSON: the run stops after extraction with one line naming the file, its line and the
    reason (not the next stage's 'No files found'); once the file is fixed, the same command reruns the step."""
    raw = tmp_path / "bad.jsonl"
    raw.write_text('{"text": "hello\n')  # an unterminated string
    args = ["run", "--input", str(raw), "--output", str(tmp_path / "out"), "--workers", "1"]
    assert curate_cli.main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("curate: error:")]
    assert errors == [f"curate: error: --input {raw}: no document read: every record is bad (malformed JSON 1; "
                      f"the first: {raw}:1: malformed JSON); expected one JSON object per line with --text-key text "
                      f"or --html-key html"], err
    assert "Traceback" not in err and not (tmp_path / "out" / FOLDERS["exact"]).exists()
    raw.write_text(json.dumps({"text": "The river runs past the old mill and the market square."}) + "\n")
    assert curate_cli.main(["extract", *args[1:]]) == 0
    assert [d["id"] for d in read_folder(tmp_path / "out" / FOLDERS["extract"])] == ["bad.jsonl/0"]


def test_step_that_keeps_nothing_is_an_error(tmp_path, capsys):
    raw = tmp_path / "web.jsonl"
    raw.write_text(json.dumps({"text": "The river runs past the old mill and the market square."}) + "\n")
    assert curate_cli.main(["extract", "--input", str(raw), "--output", str(tmp_path / "out"), "--workers", "1",
                            "--languages", "zh"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("curate: error:")]
    assert len(errors) == 1 and "extract: kept no document of 1 (dropped_language 1)" in errors[0], errors
    assert curate_cli.main(["exact", "--output", str(tmp_path / "out")]) == 2
    assert "1_extract holds no documents" in capsys.readouterr().err


# --- slurm -----------------------------------------------------------------------------------------------
def test_slurm_job_scripts_without_slurm(tmp_path, monkeypatch):
    """The slurm path writes one array job per stage, chained by afterok dependencies; a fake `sbatch`
    records the submissions, and the first stage's job runs as slurm would run array task 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    write_exe(bin_dir / "sbatch", f"#!/bin/sh\nn=$(wc -l < {log} 2>/dev/null || echo 0)\necho \"$@\" >> {log}\n"
                                  f"echo \"Submitted batch job $((n + 100))\"\n")
    write_exe(bin_dir / "scontrol", "#!/bin/sh\necho localhost\n")  # node list expansion in the task
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    raw = tmp_path / "raw"
    write_jsonl_gz(str(raw / "a.jsonl.gz"), [{"text": "hello world " * 30, "id": "a"}])
    write_jsonl_gz(str(raw / "b.jsonl.gz"), [{"text": "another text " * 30, "id": "b"}])
    cfg = CurateConfig(inputs=[str(raw)], output=str(tmp_path / "out"), fuzzy=FuzzySettings(bands=4, rows=2))
    stages = build_stages(cfg)
    run(make_executors(stages, cfg.output, ExecutorSettings(kind="slurm", partition="cpu", workers=8,
                                                           env_command="source venv/bin/activate")))
    lines = log.read_text().splitlines()  # each stage: its array job, then datatrove's stats-merging job
    job_ids = {100 + n: args for n, args in enumerate(lines) if "RUN_OFFSET" in args}
    assert len(job_ids) == len(stages)
    for i, (stage, (job, args)) in enumerate(zip(stages, job_ids.items())):
        script = (tmp_path / "out" / "logs" / stage.name / "launch_script.slurm").read_text()
        assert f"#SBATCH --array=0-{stage.tasks - 1}%8" in script
        assert "#SBATCH --partition=cpu" in script and "source venv/bin/activate" in script
        assert "launch_pickled_pipeline" in script
        assert ("--dependency=afterok:" + str(job - 2) in args) == (i > 0)
    assert [s.tasks for s in stages if s.name == "fuzzy_buckets"] == [4]  # one task per LSH band
    # array task 0 of the first stage, as srun would start it
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0", "RUN_OFFSET": "0", "SLURM_ARRAY_JOB_ID": "100",
           "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": "100"}
    pickled = str(tmp_path / "out" / "logs" / "extract" / "executor.pik")
    subprocess.run(["launch_pickled_pipeline", pickled], env=env, check=True, capture_output=True, timeout=120)
    assert [d["id"] for d in read_folder(tmp_path / "out" / FOLDERS["extract"])] == ["a"]


# --- bad records: read past, counted and located, as tools/preprocess_data.py does ------------------------
def test_a_bad_line_costs_only_itself(tmp_path, capsys):
    """200 good records with one line of invalid UTF-8 at line 101 (datatrove's JsonlReader stops the file
    there: 100 kept) and a file with a line that is JSON but not an object (an AttributeError in datatrove's):
    every good record is kept, each bad line is counted and named with its file and line."""
    rng = random.Random(3)
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = [json.dumps({"text": " ".join(rng.choice(COMMON) for _ in range(30)), "id": f"a{i}"}).encode()
             for i in range(200)]
    lines.insert(100, b'{"text": "caf\xe9 au lait"}')
    (raw / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (raw / "b.jsonl").write_text('{"text": "one river", "id": "b0"}\n[1, 2]\n{"text": "the last", "id": "b2"}\n')
    out = tmp_path / "out"
    assert curate_cli.main(["extract", "--input", str(raw), "--output", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    docs = read_folder(out / FOLDERS["extract"])
    assert sorted(d["id"] for d in docs) == sorted([f"a{i}" for i in range(200)] + ["b0", "b2"])
    assert "skipped records: 2 (" in printed and "invalid UTF-8 1" in printed and "not a JSON object 1" in printed
    assert f"  {raw / 'a.jsonl'}:101: invalid UTF-8" in printed
    assert f"  {raw / 'b.jsonl'}:2: not a JSON object" in printed
    assert curate_cli.main(["report", "--output", str(out)]) == 0
    report = capsys.readouterr().out
    assert "extract" in report.splitlines()[1] and " 202 " in report.splitlines()[1]
    assert f"{raw / 'a.jsonl'}:101: invalid UTF-8" in report


def test_report_counts_every_task_after_a_resume(tmp_path, capsys):
    """A stage resumed after one of its tasks failed: datatrove's merged stats.json holds only the task the
    resumed run ran; the report sums every task's own statistics, so its figures are the documents written."""
    raw = tmp_path / "raw"
    for name, n in (("a", 5), ("b", 7), ("c", 9)):
        write_jsonl_gz(str(raw / f"{name}.jsonl.gz"), [{"text": f"{name} document number {i}", "id": f"{name}{i}"}
                                                        for i in range(n)])
    out = tmp_path / "out"
    args = ["extract", "--input", str(raw), "--output", str(out), "--workers", "1"]
    assert curate_cli.main(args) == 0
    os.remove(out / "logs" / "extract" / "completions" / "00001")  # task 1 as if it had failed
    assert curate_cli.main(args) == 0
    with open(out / "logs" / "extract" / "stats.json") as f:
        assert json.load(f)[0]["stats"]["documents"]["total"] == 7  # the resumed run alone
    capsys.readouterr()
    assert curate_cli.main(["report", "--output", str(out)]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:3] == ["extract", "21", "21"] and len(read_folder(out / FOLDERS["extract"])) == 21


@pytest.mark.parametrize("case", ["output_is_a_file", "source_climbs_out", "eval_data_missing"])
def test_bad_curation_arguments_are_one_line(case, tmp_path, capsys):
    rng = random.Random(7)
    pages = ["\n".join(" ".join(rng.choice(COMMON) for _ in range(12)) + " the of and." for _ in range(8))
             for _ in range(2)]
    raw = tmp_path / "raw.jsonl"
    source = "../.." if case == "source_climbs_out" else "web"
    raw.write_text(json.dumps({"text": pages[0], "source": source}) + "\n"
                   + json.dumps({"text": pages[1], "source": "web"}) + "\n")
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / ("a_file" if case == "output_is_a_file" else "out")
    extra = ["--eval-data", str(tmp_path / "nope")] if case == "eval_data_missing" else []
    rc = curate_cli.main(["run", "--input", str(raw), "--output", str(out), "--workers", "1", *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if case == "source_climbs_out":  # a bad record, not a bad run: counted, named, the rest curated
        assert rc == 0 and f"{raw}:1: source is not a folder name" in captured.out
        assert not list(tmp_path.glob("*.jsonl.gz"))  # nothing written two folders above 6_upsample/
        return
    errors = [line for line in captured.err.splitlines() if line.startswith("curate: error:")]
    needle = {"output_is_a_file": f"--output {out} is a file", "eval_data_missing": f"--eval-data {tmp_path / 'nope'}"}
    assert rc == 2 and len(errors) == 1 and needle[case] in errors[0], captured.err
