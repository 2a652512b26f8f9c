"""Plant each error named in the "Prove the real-model paths" issue and check that a test fails.

Each entry replaces one exact snippet of one source file in a private copy of the repository (the working
tree is never touched), runs the named tests against that copy and expects at least one failure. It prints a
table and exits 1 if any planted error passes the tests, or if a snippet is no longer found (the catalogue
must follow the code)::

    python scripts/planted_errors.py            # all
    python scripts/planted_errors.py --only vae  # the entries whose name contains "vae"

``make mutants`` runs it after the mutation pass (docs/testing.md); CI does not (a few minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("manifests", "generators", "annotators", "anchordiff", "benchmark", "flows")


@dataclass(frozen=True)
class PlantedError:
    """Replace ``old`` (which must occur exactly once in ``path``) by ``new``; ``tests`` must then fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


SEMANTICS = "tests/anchordiff/test_anchordiff_semantics.py"
ANNOTATORS = "tests/annotators/test_annotators_semantics.py"
RECORDS = "tests/manifests/test_manifests_semantics.py"
REPORTS = "tests/benchmark/test_benchmark_report_semantics.py"
CITABLE = "tests/benchmark/test_benchmark_citable.py"
CATALOGUE: tuple[PlantedError, ...] = (
    # -- anchordiff ------------------------------------------------------------------------------------------
    PlantedError(
        "ConceptAttention map without the L2 normalisation of the concept outputs",
        "anchordiff/attention.py",
        "F.normalize(outputs, dim=-1) @ image_out",
        "outputs @ image_out",
        (SEMANTICS,),
    ),
    PlantedError(
        "concept maps built from the unconditional CFG row",
        "anchordiff/attention.py",
        "image_out[s], heads, head_dim)",
        "image_out[0], heads, head_dim)",
        (SEMANTICS,),
    ),
    PlantedError(
        "A_CI of a multi-token concept taken from its first token",
        "anchordiff/attention.py",
        "state.a_ci[self.layer] = _mean_by_concept(a_ci_tokens, concepts.concept_index, concepts.num_concepts)",
        "first = torch.stack([torch.nonzero(concepts.concept_index == k)[0, 0] for k in range(concepts.num_concepts)])"
        "\n        state.a_ci[self.layer] = a_ci_tokens[first].float()",
        (SEMANTICS,),
    ),
    PlantedError(
        "CLIP token positions shifted by one (BOS included)",
        "anchordiff/pipeline.py",
        "range(1, clip_real[k] - 1)",
        "range(0, clip_real[k] - 2)",
        (SEMANTICS,),
    ),
    PlantedError(
        "T5 token positions shifted by one",
        "anchordiff/pipeline.py",
        "for j in range(max(0, t5_real[k] - 1))]",
        "for j in range(1, t5_real[k])]",
        (SEMANTICS,),
    ),
    PlantedError(
        "Seg4Diff prompt positions shifted by one (BOS dropped before the search)",
        "anchordiff/pipeline.py",
        "input_ids[:-1]  # BOS + content, no EOS",
        "input_ids[1:-1]  # BOS + content, no EOS",
        (SEMANTICS,),
    ),
    PlantedError(
        "Seg4Diff softmax over the prompt keys only where Seg4Diff takes all joint keys",
        "anchordiff/pipeline.py",
        'source = record.i2t_joint if ad.options.seg4diff_softmax == "joint" else record.i2t_clip',
        'source = record.i2t_clip if ad.options.seg4diff_softmax == "joint" else record.i2t_joint',
        (SEMANTICS,),
    ),
    PlantedError(
        "Seg4Diff attention read from the unconditional CFG row",
        "anchordiff/attention.py",
        "image_to_prompt_attention(q_img, k_img, ctx_k[s], state.prompt_tokens)",
        "image_to_prompt_attention(q_img, k_img, ctx_k[0], state.prompt_tokens)",
        (SEMANTICS,),
    ),
    PlantedError(
        "Seg4Diff map of a multi-token concept from its first token",
        "anchordiff/attention.py",
        "weights[[n + j for j in positions], concept] = 1.0 / len(positions)",
        "weights[n + positions[0], concept] = 1.0",
        (SEMANTICS,),
    ),
    PlantedError(
        "scale_noise at the wrong timestep",
        "anchordiff/pipeline.py",
        "timesteps[index].reshape(1), noise",
        "timesteps[index + 1].reshape(1), noise",
        (SEMANTICS,),
    ),
    PlantedError(
        "VAE shift factor dropped",
        "anchordiff/pipeline.py",
        "shift = pipe.vae.config.shift_factor or 0.0",
        "shift = 0.0",
        (SEMANTICS,),
    ),
    PlantedError(
        "VAE scaling factor dropped",
        "anchordiff/pipeline.py",
        "return (latent.float() - shift) * pipe.vae.config.scaling_factor",
        "return latent.float() - shift",
        (SEMANTICS,),
    ),
    PlantedError(
        "inversion step's sign flipped",
        "anchordiff/pipeline.py",
        "x = x + (sigma_next - sigma) * velocity",
        "x = x - (sigma_next - sigma) * velocity",
        (SEMANTICS,),
    ),
    PlantedError(
        "generate() recording the wrong CFG half",
        "anchordiff/attention.py",
        "state.sample = batch // 2 if state.cfg else 0",
        "state.sample = 0",
        (SEMANTICS,),
    ),
    PlantedError(
        "generate() recording the step after the midpoint",
        "anchordiff/pipeline.py",
        "step = num_inference_steps // 2\n",
        "step = num_inference_steps // 2 + 1\n",
        (SEMANTICS,),
    ),
    PlantedError(
        "option default changed: concept_pass",
        "anchordiff/pipeline.py",
        'concept_pass: str = "joint"',
        'concept_pass: str = "separate"',
        (SEMANTICS,),
    ),
    PlantedError(
        "option default changed: gate quantile",
        "anchordiff/pipeline.py",
        "DEFAULT_GATE_QUANTILE = 0.98",
        "DEFAULT_GATE_QUANTILE = 0.95",
        (SEMANTICS,),
    ),
    PlantedError(
        "option default changed: sd3 graph layers",
        "anchordiff/backbones.py",
        "24, (9, 18), SD3",
        "24, (10, 23), SD3",
        (SEMANTICS,),
    ),
    # -- annotators -----------------------------------------------------------------------------------------
    PlantedError(
        "SAM2 masks handed to the wrong concept",
        "annotators/segment.py",
        "owners = [c.name for c in record.concepts for _ in c.boxes]",
        "owners = [c.name for c in reversed(record.concepts) for _ in c.boxes]",
        (ANNOTATORS,),
    ),
    PlantedError(
        "SAM2 box i taken as concept i's box",
        "annotators/segment.py",
        "mine = [i for i, owner in enumerate(owners) if owner == name]",
        "mine = [record.concept_names.index(name)]",
        (ANNOTATORS,),
    ),
    PlantedError(
        "Qwen box x / y scales swapped",
        "annotators/grounding.py",
        "sx, sy = out_w / in_w, out_h / in_h",
        "sx, sy = out_h / in_h, out_w / in_w",
        (ANNOTATORS,),
    ),
    PlantedError(
        "Qwen boxes left in the resized model-input frame",
        "annotators/grounding.py",
        "box = map_box(obj.box, input_size, original_size)",
        "box = map_box(obj.box, original_size, original_size)",
        (ANNOTATORS,),
    ),
    PlantedError(
        "Qwen frame read from the grid with height and width swapped",
        "annotators/localize.py",
        "for _, h, w in grid]",
        "for _, w, h in grid]",
        (ANNOTATORS,),
    ),
    # -- records ---------------------------------------------------------------------------------------------
    PlantedError(
        "record id ignores the seed",
        "manifests/record.py",
        ', "seed": seed}',
        "}",
        (RECORDS,),
    ),
    PlantedError(
        "record id ignores the setting",
        "manifests/record.py",
        '"setting": setting, ',
        "",
        (RECORDS,),
    ),
    PlantedError(
        "record id ignores the order of the concepts",
        "manifests/record.py",
        '"concepts": concepts,',
        '"concepts": sorted(concepts),',
        (RECORDS,),
    ),
    PlantedError(
        "web id hashes the raw URL",
        "manifests/record.py",
        '"web-" + _digest(canonical_url(url))',
        '"web-" + _digest(url)',
        (RECORDS,),
    ),
    # -- reports ---------------------------------------------------------------------------------------------
    PlantedError(
        "failed pairs averaged into the report as zeros",
        "benchmark/report.py",
        "overall = fg_means(ok)",
        'overall = fg_means([{**r, "scores": r.get("scores") or dict.fromkeys(FG_METRICS, 0.0)}'
        ' for r in rows if r.get("status") != "invalid"])',
        (REPORTS,),
    ),
    PlantedError(
        "a raising method's pairs recorded as ok zeros",
        "benchmark/evaluate.py",
        'log.append({**row_base(sample, target), "status": "failed", "error": message})',
        'log.append({**row_base(sample, target), "status": "ok", "scores": {"miou_fg": 0.0, "iou_target": 0.0,'
        ' "acc_fg": 0.0, "map_fg": 0.0, "nar": 0.0, "degenerate": False}})',
        (REPORTS,),
    ),
    PlantedError(
        "degenerate NAR averaged as 0",
        "benchmark/report.py",
        "finite = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]",
        "finite = [0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]",
        (REPORTS,),
    ),
    PlantedError(
        "degenerate NAR computed as 0",
        "benchmark/metrics.py",
        "nar=math.nan if degenerate else other_sum / total",
        "nar=0.0 if degenerate else other_sum / total",
        (REPORTS,),
    ),
    # -- citable reports and splits (issue 15) --------------------------------------------------------------
    PlantedError(
        "chance maps scored on another concept than the method's target",
        "benchmark/evaluate.py",
        'row["chance"] = chance_scores(protocol, sample, target, ap_channels=ap_channels)',
        'row["chance"] = chance_scores(protocol, sample, 0, ap_channels=ap_channels)',
        (CITABLE,),
    ),
    PlantedError(
        "bootstrap resampling pairs instead of images",
        "benchmark/report.py",
        'by_image[str(row["sample_id"])].append(row)',
        "by_image[f\"{row['sample_id']}/{row.get('target')}/{id(row)}\"].append(row)",
        (CITABLE,),
    ),
    PlantedError(
        "a smoke run printed in bold beside the published rows",
        "benchmark/report.py",
        'return text if self.smoke else f"**{text}**"',
        'return f"**{text}**"',
        (CITABLE,),
    ),
    PlantedError(
        "Chefer's NaN -> 0 AP of a constant map not applied under the compatibility option",
        "benchmark/metrics.py",
        'constant_ap = 0.5 if ap_channels == "both" else n_fg / labeled',
        "constant_ap = None",
        (CITABLE,),
    ),
    PlantedError(
        "224 protocol labels resized bilinearly instead of by nearest neighbour",
        "benchmark/evaluate.py",
        "Image.Resampling.NEAREST",
        "Image.Resampling.BILINEAR",
        (CITABLE,),
    ),
    PlantedError(
        "--limit takes the first rows of each stratum",
        "benchmark/evaluate.py",
        "picks = rng.permutation(len(members))[: quota[name]]",
        "picks = range(quota[name])",
        (CITABLE,),
    ),
    PlantedError(
        "validation split not ranked by the id's hash (depends on row order)",
        "manifests/splits.py",
        "ranked = sorted(stratum_ids, key=_rank)",
        "ranked = list(stratum_ids)",
        ("tests/manifests/test_manifests_splits.py",),
    ),
    PlantedError(
        "parquet bbox taken from the prompt box instead of the mask",
        "manifests/publish/shards.py",
        '"bbox": [list(map(float, m.bbox)) for m in item.masks],',
        '"bbox": [list(map(float, c.boxes[0])) for c in record.concepts],',
        ("tests/manifests/publish/test_publish_build.py",),
    ),
    PlantedError(
        "COCO category ids one off the parquet ClassLabel",
        "manifests/publish/coco.py",
        '"category_id": category_id[concept.name],',
        '"category_id": category_id[concept.name] - 1,',
        ("tests/manifests/publish/test_publish_build.py",),
    ),
)


def run_one(error: PlantedError, copy: Path) -> tuple[bool, str]:
    """(caught, detail): plant ``error`` in ``copy``, run its tests, restore the file."""
    target = copy / error.path
    original = target.read_text("utf-8")
    count = original.count(error.old)
    if count != 1:
        return False, f"snippet found {count} times in {error.path}: update the catalogue"
    target.write_text(original.replace(error.old, error.new), "utf-8")
    try:
        env = {**os.environ, "PYTHONPATH": str(copy)}
        command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *error.tests]
        result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
    finally:
        target.write_text(original, "utf-8")
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    if result.returncode == 1:
        return True, summary
    if result.returncode == 0:
        return False, f"tests passed: {summary}"
    return False, f"pytest exit {result.returncode} (not a test failure): {summary}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the entries whose name contains this")
    args = parser.parse_args()
    chosen = [e for e in CATALOGUE if args.only in e.name]
    if not chosen:
        print(f"no planted error matches {args.only!r}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mcc-planted-") as tmp:
        copy = Path(tmp)
        for name in (*PACKAGES, "tests", "scripts", "pyproject.toml"):
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, copy / name)
        print("| planted error | file | caught | seconds | pytest |")
        print("|---|---|---|---|---|")
        missed = 0
        for error in chosen:
            started = time.perf_counter()
            caught, detail = run_one(error, copy)
            missed += not caught
            seconds = time.perf_counter() - started
            print(
                f"| {error.name} | {error.path} | {'yes' if caught else '**NO**'} | {seconds:.0f} | {detail} |"
            )
    print(f"\n{len(chosen) - missed} of {len(chosen)} planted errors caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
