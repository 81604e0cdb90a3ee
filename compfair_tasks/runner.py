"""Run a list of command-line steps (compressors, `lm_eval` over a set of models, the leaderboard) with resume.

Used by `compfair demo` and `compfair compare`. Each step writes one output (a folder or a file) and,
when it succeeds, a record next to it (`<output>.step.json`) holding the step's settings: its argv,
its extra environment, a fingerprint of its inputs (the record of the step that made an input,
or the input's files), and the code it ran (compfair's version and commit, the libraries' versions).
A rerun skips a step only when the record's settings equal the step's settings now, so a rerun with another profile, limit or task list never reuses the old results: it reruns the
step (`on_change="rerun"`) or refuses with a message naming `--rerun` (`on_change="refuse"`).
The output of each command goes to the terminal (progress bars included) and to `<output>.log`.

An output is replaced only when its record proves the runner wrote it: the record is written (as
"started") before the step runs, so a crashed step's output is recognised too; an output with no record
stops the run and is never deleted. A step being redone first moves the old output aside (`.<name>.step-previous`)
and puts it back if the step fails, so a failed rerun never costs the previous result.

Standard library only: the command line (demo, compare) sits above every package and imports this.
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from compfair_tasks.versions import software_versions

RECORD_SUFFIX = ".step.json"
LOG_SUFFIX = ".log"
ASIDE = ".step-previous"  # `.<output name>.step-previous`: the old output while its step is redone


class StepError(RuntimeError):
    """A step failed."""


class SettingsChanged(StepError):
    """A step's old output may not be replaced: made with other settings under on_change="refuse", or with no
    record proving compfair wrote it (bad input: exit 2)."""


@dataclass
class Step:
    title: str
    command: list[str]
    output: Path  # the folder or file the command writes; its record and log sit next to it
    env: dict[str, str] = field(default_factory=dict)  # added to the environment (part of the settings)
    inputs: tuple[Path, ...] = ()  # outputs of earlier steps, or other files/folders the command reads


def lm_eval_command(*, model: str, model_args: str, tasks: str | list[str], output_path: Path,
                    batch_size: str | int = "auto", limit: float | None = None, device: str | None = None,
                    metadata: dict | None = None, gen_kwargs: str = "", seed: int | None = None) -> list[str]:
    """The one spelling of an lm_eval run: `python -m lm_eval run`, with samples logged (paired tests need them)."""
    command = [sys.executable, "-m", "lm_eval", "run", "--model", model, "--model_args", model_args,
               "--tasks", tasks if isinstance(tasks, str) else ",".join(tasks),
               "--batch_size", str(batch_size), "--output_path", str(output_path), "--log_samples"]
    if device:
        command += ["--device", device]
    if limit:
        command += ["--limit", f"{limit:g}"]
    if metadata:
        command += ["--metadata", json.dumps(metadata, sort_keys=True)]
    if gen_kwargs:
        command += ["--gen_kwargs", gen_kwargs]
    if seed is not None:
        command += ["--seed", str(seed)]
    return command


def record_path(output: Path) -> Path:
    return output.with_name(output.name + RECORD_SUFFIX)


def log_path(output: Path) -> Path:
    return output.with_name(output.name + LOG_SUFFIX)


def fingerprint(path: Path) -> str:
    """What an input is: the settings key of the step that made it, else its files' names, sizes and times."""
    path = Path(path)
    made_by_step = _read_record(path)
    if made_by_step and made_by_step.get("key"):  # the time too: a step rerun with the same settings still makes a new input
        return f"step:{made_by_step['key']}:{made_by_step.get('finished')}"
    if path.is_file():
        stat = path.stat()
        return f"file:{stat.st_size}:{stat.st_mtime_ns}"
    if path.is_dir():
        entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
        return "dir:" + hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return "missing"


def settings(step: Step) -> dict:
    # the interpreter path is not a setting: another venv with the same versions runs the same step; new code
    # (compfair's version or commit, a library's version) reruns it
    argv = ["python" if i == 0 and word == sys.executable else word for i, word in enumerate(step.command)]
    found = {"argv": argv, "env": dict(sorted(step.env.items())),
             "inputs": {str(p): fingerprint(p) for p in step.inputs}, "software": software_versions()}
    found["key"] = hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()
    return found


def _read_record(output: Path) -> dict | None:
    try:
        return json.loads(record_path(output).read_text())
    except (OSError, ValueError):
        return None


def describe_change(old: dict, new: dict) -> str:
    """One line naming what differs between two settings records, e.g. `argv: --limit 10 -> 50`."""
    parts = []
    old_argv, new_argv = old.get("argv", []), new["argv"]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old_argv, b=new_argv, autojunk=False).get_opcodes():
        if tag != "equal":
            # show the flag a changed value belongs to: "--limit 10 -> --limit 50", not "10 -> 50"
            if i1 > 0 and j1 > 0 and old_argv[i1 - 1].startswith("-") and old_argv[i1 - 1] == new_argv[j1 - 1]:
                i1, j1 = i1 - 1, j1 - 1
            before, after = shlex.join(old_argv[i1:i2]), shlex.join(new_argv[j1:j2])
            parts.append(f"argv: added {after}" if tag == "insert" else f"argv: dropped {before}"
                         if tag == "delete" else f"argv: {before} -> {after}")
    for name in ("env", "inputs", "software"):
        if old.get(name) != new[name]:
            changed = sorted(k for k in set(old.get(name, {})) | set(new[name])
                             if old.get(name, {}).get(k) != new[name].get(k))
            parts.append(f"{name}: {', '.join(changed)}")
    return "; ".join(parts) or "settings record unreadable"


def _write_record(output: Path, record: dict) -> None:
    path = record_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)  # a first step's output folder may not exist yet
    unfinished = path.with_suffix(".tmp")
    unfinished.write_text(json.dumps(record, indent=2))
    unfinished.replace(path)


def _remove(output: Path) -> None:
    """Delete a step output whose record (checked by the caller) proves the runner wrote it."""
    if output.is_dir() and not output.is_symlink():
        shutil.rmtree(output)
    elif output.exists() or output.is_symlink():
        output.unlink()
    record_path(output).unlink(missing_ok=True)


def _aside(output: Path) -> Path:
    return output.with_name(f".{output.name}{ASIDE}")


def _move(source: Path, target: Path) -> None:
    os.rename(source, target)
    if record_path(source).exists():
        os.rename(record_path(source), record_path(target))


def _recover(output: Path) -> None:
    """A run killed while redoing a step left the old output aside: put it back unless the step finished."""
    aside = _aside(output)
    if not (aside.exists() or aside.is_symlink()):
        return
    current = _read_record(output)
    if current and current.get("key"):  # the redone step finished: the old output is no longer wanted
        _remove(aside)
        return
    if current is not None:
        _remove(output)  # the killed step's partial output (its "started" record proves it ours)
    _move(aside, output)


def _tee(command: list[str], env: dict, log: Path) -> int:
    """Run `command`, copying its output (progress bars' carriage returns included) to the terminal and `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        while chunk := process.stdout.read1(65536):
            handle.write(chunk)
            handle.flush()
            sys.stdout.write(decoder.decode(chunk))
            sys.stdout.flush()
        return process.wait()


def run_steps(steps: list[Step], *, prog: str, rerun: bool = False, on_change: str = "rerun",
              started: float | None = None) -> None:
    """Run each step whose settings differ from its record's (all of them with `rerun`); raise StepError on failure.

    on_change: "rerun" replaces an output made with other settings; "refuse" stops with a message naming --rerun
    (for outputs that take hours to remake).
    """
    if on_change not in ("rerun", "refuse"):
        raise ValueError(f"on_change must be 'rerun' or 'refuse', got {on_change!r}")
    started = time.monotonic() if started is None else started
    for number, step in enumerate(steps, 1):
        clock = f"[{number}/{len(steps)} {time.monotonic() - started:6.0f}s] {step.title}"
        _recover(step.output)
        wanted, old = settings(step), _read_record(step.output)
        exists = step.output.exists() or step.output.is_symlink()
        if old and old.get("key") == wanted["key"] and exists and not rerun:
            print(f"{clock}: done already with the same settings, skipped (--rerun to redo)", flush=True)
            continue
        if exists and old is None:  # nothing proves compfair wrote it: a user's folder, or an older compfair's
            raise SettingsChanged(f"{prog}: {step.output} exists but has no record of its settings "
                            f"({record_path(step.output).name}), so compfair cannot tell that it wrote it and never "
                            "replaces it: move it away (or delete it yourself), or choose another --output")
        if exists and not rerun:
            why = (f"it was made with other settings ({describe_change(old, wanted)})" if old.get("key")
                   else "its step did not finish")
            if on_change == "refuse":
                raise SettingsChanged(f"{prog}: {step.output} exists but {why}; pass --rerun to replace it, "
                                      "or choose another --output")
            print(f"{clock}: {step.output} exists but {why}: running it again", flush=True)
        if exists:
            _move(step.output, _aside(step.output))  # put back if the step fails
        elif old is not None:
            record_path(step.output).unlink()  # a record whose output is gone
        _write_record(step.output, {"title": step.title, "started": time.time()})  # proves the output ours
        log = log_path(step.output)
        print(f"{clock}\n    $ {shlex.join(step.command)}\n    (log: {log})", flush=True)
        began = time.monotonic()
        returncode = _tee(step.command, {**os.environ, **step.env}, log)
        failure = None
        if returncode != 0:
            failure = (f"{prog}: step '{step.title}' failed (exit {returncode}); see {log}. Fix the error "
                       "and run again: finished steps are kept")
        elif not step.output.exists():
            failure = f"{prog}: step '{step.title}' exited 0 but wrote no {step.output}; see {log}"
        if failure:
            _remove(step.output)  # what the failed step wrote, and its "started" record
            if exists:
                _move(_aside(step.output), step.output)
            raise StepError(failure)
        _write_record(step.output, {"title": step.title, **wanted, "finished": time.time()})
        if exists:
            _remove(_aside(step.output))
        print(f"    done in {time.monotonic() - began:.0f} s", flush=True)
