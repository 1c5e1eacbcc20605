"""`csdistill compare`: every (loss, seed) trained from one student start, all evaluated, one table.

    csdistill compare --config base.yaml --losses sft,fkl,rkl,srkl,csd:SS,csd:TS,csd:US --seeds 0,1,2 --out DIR

base.yaml is an ordinary training config: model.name_or_path is the student start that every run begins
from, teacher.name_or_path the teacher, data.* the training data (data.validation_file: the split a
learning-rate sweep is scored on), eval.sets the test sets, train.* the recipe. A run changes only
loss.name / loss.weighting (`sft`: train.mode=sft on the same data, i.e. SeqKD when the responses are the
teacher's), train.seed, train.lr and train.output_dir. The quickstart is this command on the built-in suite.

Layout under --out (a rerun reuses every run whose settings and inputs did not change, and every
evaluation whose model, teacher, sets and settings did not; a finished comparison reruns nothing):
  configs/<run>.yaml      each run's config: rerun one by hand with `csdistill train --config ...`
  runs/<run>/             each run's train.output_dir (<run> = <loss>_seed<k>), stamp.json once finished
  sweep/                  --lr-sweep: one run per (loss, lr) at seed SWEEP_SEED, scored on validation; sweep.json
  eval/<decode>/<row>/    evaluation of each row (teacher, student start, runs) per decoding (greedy / sampled)
  report/report.md        the table (mean ± std over seeds, best in bold), plots, provenance; compare.json

Modules: specs (flags -> runs, seeds, lrs), plan (run configs, stamps, what a rerun reuses), workers
(evaluation in this process or in pinned worker processes), table (scores, headline table), noise
(paired-bootstrap intervals), run (the whole comparison and its CLI).
"""

from csdistill.compare.noise import noise_analysis
from csdistill.compare.plan import (SWEEP_SEED, Layout, Row, base_overrides, eval_config, inputs_fingerprint,
                                    run_overrides, training_jobs)
from csdistill.compare.run import (CAPTION, CompareOptions, CompareResult, add_arguments, compare, compare_command,
                                   compare_from_args, print_summary)
from csdistill.compare.specs import (DECODES, RunSpec, parse_baselines, parse_decodes, parse_floats, parse_losses,
                                     parse_lrs, parse_seeds)
from csdistill.compare.table import (comparison_table, headline_scores, is_free_text, selection_score, set_score,
                                     summary_scores)
from csdistill.compare.workers import evaluate_in_workers, evaluate_rows

__all__ = ["CAPTION", "DECODES", "SWEEP_SEED", "CompareOptions", "CompareResult", "Layout", "Row", "RunSpec",
           "add_arguments", "base_overrides", "compare", "compare_command", "compare_from_args", "comparison_table",
           "eval_config", "evaluate_in_workers", "evaluate_rows", "headline_scores", "inputs_fingerprint",
           "is_free_text", "noise_analysis", "parse_baselines", "parse_decodes", "parse_floats", "parse_losses",
           "parse_lrs", "parse_seeds", "print_summary", "run_overrides", "selection_score", "set_score",
           "summary_scores", "training_jobs"]
