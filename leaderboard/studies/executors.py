"""The local executor: the cells one after another in this machine, a progress line with done, running,
failed, left and the estimated time left (tqdm's, from the cells finished so far).

It evaluates in this interpreter (cells.evaluate_in_process: libraries, task index, data, scorers and the
fluency judge load once), or with `in_process=False` runs `lm_eval run` in a subprocess per cell (a cell that
crashes the interpreter, e.g. out of memory, then cannot take the study down). Compressions always run as
`compfair compress ...` commands."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from .cells import evaluate_in_process, evaluate_subprocess, run_cell
from .plan import cell_dir


class LocalExecutor:
    def __init__(self, evaluate=None, in_process: bool = True):
        # evaluate(cell, folder, log): what cells.run_cell evaluates with
        self.evaluate = evaluate or (evaluate_in_process if in_process else evaluate_subprocess)

    def run(self, study_dir: Path, cells: list[dict]) -> None:
        failed = 0
        with tqdm(total=len(cells), unit="cell", desc="study", dynamic_ncols=True) as bar:
            for done, cell in enumerate(cells):
                bar.set_postfix_str(f"done {done - failed}, running 1 ({cell['id']}), failed {failed}, "
                                    f"left {len(cells) - done - 1}")
                record = run_cell(study_dir, cell["id"], evaluate=self.evaluate)
                if record["status"] != "done":
                    failed += 1
                    bar.write(f"FAILED {cell['id']}: {record['error']}; log: "
                              f"{cell_dir(study_dir, cell['id']) / record['log']}")
                else:
                    bar.write(f"done   {cell['id']} in {record['seconds']:.0f} s")
                bar.update(1)
            bar.set_postfix_str(f"done {len(cells) - failed}, failed {failed}, left 0")
