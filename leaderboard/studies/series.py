"""Series members from a spec: hub revisions (Pythia's stepN), a folder of checkpoint-N folders, or a model list.

Each member is checked before any cell runs: its config loads (from the Hugging Face cache when offline), and
a hub revision exists (in the cache offline, among the repository's branches and tags online).
"""

from __future__ import annotations

import re
from pathlib import Path

from compfair_tasks.hub import offline
from compfair_tasks.models import EMBEDDED_MODELS, ModelNotAvailableError, embedded_model_dir

from .spec import MEMBER_KEYS, Located, Spec, check_keys, expect

STEP = re.compile(r"(?:^|[^a-z])step-?(\d+)$|^checkpoint-(\d+)$", re.IGNORECASE)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def step_of(name: str) -> int | None:
    """The training step a revision or folder name carries (`step1000`, `checkpoint-20`), else None."""
    match = STEP.search(name)
    return int(match.group(1) or match.group(2)) if match else None


def _is_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def _local(base: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _cached_revisions(repo: str) -> list[str]:
    from huggingface_hub import constants

    refs = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs"
    return sorted(p.name for p in refs.iterdir()) if refs.is_dir() else []


def _check_revisions(repo: str, revisions: list, path: tuple, located: Located) -> None:
    if offline():
        known = _cached_revisions(repo)
        fix_where = (f"the Hugging Face cache holds {', '.join(known) or 'no revision of it'} and the hub is offline "
                     f"({offline()}); download it where there is network (hf download {repo} --revision REV) "
                     "or remove it from the spec")
    else:
        from huggingface_hub import HfApi

        try:
            refs = HfApi().list_repo_refs(repo)
        except Exception as error:  # unknown repository, gated, no network
            raise located.error(path, f"{repo}: its revisions cannot be listed ({type(error).__name__})",
                                "check the model id and the network, or set HF_HUB_OFFLINE=1 to use the cache") from None
        known = [ref.name for ref in [*refs.branches, *refs.tags]]
        fix_where = "the repository has no such branch or tag; check the spelling (Pythia: step1000 ... step143000)"
    for i, revision in enumerate(revisions):
        if str(revision) not in known and not re.fullmatch(r"[0-9a-f]{40}", str(revision)):
            raise located.error((*path, i), f"revision {revision!r} of {repo} does not exist here", fix_where)


def _check_loads(member: dict, path: tuple, located: Located) -> None:
    """The member's config loads as lm_eval's HFLM will load it (same name, revision)."""
    from transformers import AutoConfig

    options = {"revision": member["revision"]} if member.get("revision") else {}
    try:
        AutoConfig.from_pretrained(member["pretrained"], **options)
    except Exception as error:  # missing folder/id, offline without cache, unknown architecture
        where = f"{member['pretrained']}" + (f" at revision {member['revision']}" if member.get("revision") else "")
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        if Path(member["pretrained"]).is_absolute():
            fix = "give a folder that save_pretrained wrote (a readable config.json and the weights)"
        elif offline():
            fix = "download it where there is network and copy the Hugging Face cache, or give a local folder"
        else:
            fix = "check the model id (and that you may access it)"
        raise located.error(path, f"model {where} cannot be loaded ({reason})", fix) from None


def _tokenizer_for(folder: Path, given: str | None, base: Path) -> str | None:
    if given:
        return str(_local(base, given)) if _is_local(given) or (base / given).exists() else given
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    for parent in (folder.parent, folder.parent.parent):  # a distiller's output holds the tokenizer
        if any((parent / name).is_file() for name in TOKENIZER_FILES):
            return str(parent)
    return None


def expand(spec: Spec, check: bool = True) -> list[dict]:
    """The members of every series, in spec order: {series, series_order, axis, member} dicts."""
    out = []
    located = spec.located
    for order, series in enumerate(spec.series):
        path = ("series", order)
        kinds = [key for key in ("model", "checkpoints", "models") if key in series]
        if len(kinds) != 1:
            raise located.error(path, f"series {series['name']!r} needs exactly one of model:, checkpoints:, models:",
                                "give a hub id/folder (model:, with revisions:), a folder of checkpoint-N folders "
                                "(checkpoints:) or a list (models:)")
        if "revisions" in series and kinds != ["model"]:
            raise located.error((*path, "revisions"), "revisions belong to a model:", "add `model: <hub id>`")
        if "steps" in series and kinds != ["checkpoints"]:
            raise located.error((*path, "steps"), "steps select checkpoint-N folders", "add `checkpoints: <folder>`")
        members = _members(series, kinds[0], path, spec, check)
        for member_path, member in members:
            if check:
                _check_loads(member["member"], member_path, located)
            out.append({"series": series["name"], "series_order": order, **member})
    return out


def _members(series: dict, kind: str, path: tuple, spec: Spec, check: bool) -> list[tuple[tuple, dict]]:
    located, base = spec.located, spec.base_dir
    tokenizer = series.get("tokenizer")
    if tokenizer is not None:
        expect(tokenizer, str, (*path, "tokenizer"), located, "a tokenizer id or folder")
    if kind == "model":
        model = expect(series["model"], str, (*path, "model"), located, "a hub id or checkpoint folder")
        pretrained = str(_local(base, model)) if _is_local(model) or (base / model).exists() else model
        if model in EMBEDDED_MODELS and "revisions" not in series:  # smollm2-135m: its converted folder
            try:
                pretrained = str(embedded_model_dir(model))
            except ModelNotAvailableError as error:
                raise located.error((*path, "model"), str(error), "install it (make install)") from None
        revisions = series.get("revisions")
        if revisions is None:
            return [((*path, "model"), _member(pretrained, None, model.rstrip("/").split("/")[-1], ("order", 0),
                                               tokenizer, base))]
        expect(revisions, list, (*path, "revisions"), located, "a list of revision names (step1000, ...)")
        if not revisions:
            raise located.error((*path, "revisions"), "no revisions", "list at least one, or drop revisions:")
        if pretrained != model:
            raise located.error((*path, "revisions"), "revisions of a local folder",
                                "give a hub id (or a folder of checkpoint-N folders as checkpoints:)")
        for i, revision in enumerate(revisions):
            expect(revision, str, (*path, "revisions", i), located, "a revision name such as step1000")
        if check:
            _check_revisions(model, revisions, (*path, "revisions"), located)
        steps = [step_of(r) for r in revisions]
        use_step = all(s is not None for s in steps)
        members = [((*path, "revisions", i), _member(pretrained, revision, revision,
                                                     ("step", steps[i]) if use_step else ("order", i), tokenizer, base))
                   for i, revision in enumerate(revisions)]
        # training order, whatever order the spec lists them in
        return sorted(members, key=lambda m: m[1]["axis"]["value"]) if use_step else members
    if kind == "checkpoints":
        folder = _local(base, expect(series["checkpoints"], str, (*path, "checkpoints"), located, "a folder"))
        if (folder / "checkpoints").is_dir() and not list(folder.glob("checkpoint-*")):
            folder = folder / "checkpoints"  # a distiller's --output
        found = {step_of(p.name): p for p in folder.glob("checkpoint-*") if p.is_dir() and step_of(p.name) is not None}
        if not found:
            raise located.error((*path, "checkpoints"), f"{folder} holds no checkpoint-N folders",
                                "give the folder the HF Trainer or `compfair compress distill` saved checkpoints in")
        wanted = series.get("steps")
        if wanted is not None:
            expect(wanted, list, (*path, "steps"), located, "a list of step numbers")
            for i, step in enumerate(wanted):
                if step not in found:
                    raise located.error((*path, "steps", i), f"no checkpoint-{step} in {folder}",
                                        f"pick from {sorted(found)}")
        steps = sorted(found) if wanted is None else sorted(wanted)
        return [((*path, "checkpoints"), _member(str(found[s]), None, str(s), ("step", s), tokenizer, base))
                for s in steps]
    models = expect(series["models"], list, (*path, "models"), located, "a list of models")
    if not models:
        raise located.error((*path, "models"), "no models", "list at least one")
    entries = []
    for i, item in enumerate(models):
        item = {"pretrained": item} if isinstance(item, str) else item
        expect(item, dict, (*path, "models", i), located, "a model id/folder or {pretrained:, size:, label:}")
        check_keys(item, MEMBER_KEYS, (*path, "models", i), located)
        if not isinstance(item.get("pretrained"), str):
            raise located.error((*path, "models", i), "a model without pretrained:", "add `pretrained: <id or folder>`")
        for key in ("size", "order"):
            if key in item:
                expect(item[key], (int, float), (*path, "models", i, key), located, f"a number ({key})")
        entries.append(item)
    axis = "size" if all("size" in e for e in entries) else "order"
    out = []
    for i, item in enumerate(entries):
        name = item["pretrained"]
        pretrained = str(_local(base, name)) if _is_local(name) or (base / name).exists() else name
        value = item["size"] if axis == "size" else item.get("order", i)
        member = _member(pretrained, item.get("revision"), item.get("label") or name.rstrip("/").split("/")[-1],
                         (axis, value), item.get("tokenizer", tokenizer), base)
        member["member"]["size"] = item.get("size")
        out.append(((*path, "models", i), member))
    return out


def _member(pretrained: str, revision, label: str, axis: tuple, tokenizer, base: Path) -> dict:
    local = Path(pretrained)
    tokenizer = _tokenizer_for(local, tokenizer, base) if local.is_absolute() else tokenizer
    member = {"pretrained": pretrained, "revision": revision, "label": label, "size": None}
    if tokenizer:
        member["tokenizer"] = tokenizer
    value = axis[1]
    value = int(value) if isinstance(value, float) and value.is_integer() else value
    return {"axis": {"name": axis[0], "value": value}, "member": member}
