"""Startup hook that lets `lm_eval` find compfair tasks with no `--include_path`.

lm-eval 0.4.x has no plugin entry point for tasks, so `compfair.pth` (installed at the
site-packages root) imports this module at interpreter start. It costs well under a millisecond
(measured in benchmarks/startup_hook.py): it only puts a tiny finder on `sys.meta_path` that waits
for a few modules to be imported and then runs a callback on them:

- `lm_eval.tasks.manager`: `TaskManager.__init__` gains compfair's `task_configs` directory as the
  first include path (a user's own `include_path` still overrides same-named tasks).
- `transformers.models.auto.modeling_auto`: compfair's pruned config and model classes (GPT-2 and
  Llama with per-layer head counts) are registered through `AutoConfig.register` and
  `AutoModelForCausalLM.register`, so those checkpoints load without `trust_remote_code`.
- `lm_eval.models`: the model types `compfair-quantized` (int8 checkpoints of `compfair compress
  quantize`) and `compfair-mlm` (masked LMs and sentence encoders) join lm_eval's model registry.

Set COMPFAIR_NO_HOOK=1 to switch it off (then use `--include_path $(compfair task-dir)`).
Only the standard library may be imported at module level here.
"""

import os
import sys

_POST_IMPORT = {}  # module name -> list of callbacks run once the module has been executed


def task_configs_dir():
    """Directory holding compfair's YAML task configs (installed wheel or source checkout)."""
    from pathlib import Path

    package_dir = Path(__file__).resolve().parent
    installed = package_dir / "task_configs"
    return installed if installed.is_dir() else package_dir.parent / "task_configs"


def when_imported(module_name, callback):
    """Run callback(module) right after `module_name` is imported (at once if it already is)."""
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    _POST_IMPORT.setdefault(module_name, []).append(callback)


def when_no_transformers_import(callback):
    """Run callback() once no transformers module is mid-import (at once if none is).

    transformers' modules import each other in cycles (modeling_layers imports modeling_auto half way),
    so code that needs, e.g., modeling_llama cannot run in the middle of such a chain.
    """
    if _TRANSFORMERS_IMPORTING:
        _DEFERRED.append(callback)
    else:
        callback()


_TRANSFORMERS_IMPORTING = []  # transformers modules executing now, outermost first
_DEFERRED = []  # callbacks waiting for _TRANSFORMERS_IMPORTING to empty


def _run_safely(callback, *args, name):
    try:
        callback(*args)
    except Exception as error:  # a broken hook must never break the import it rides on
        sys.stderr.write(f"compfair: startup hook for {name} failed: {error!r}\n")


def _is_transformers(name):
    return name == "transformers" or name.startswith("transformers.")


class _LoaderWithCallbacks:
    """Wraps a module's loader; after the module executes, runs its registered callbacks."""

    def __init__(self, loader, callbacks):
        self._loader = loader
        self._callbacks = callbacks

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        tracked = _is_transformers(module.__name__)
        if tracked:
            _TRANSFORMERS_IMPORTING.append(module.__name__)
        try:
            self._loader.exec_module(module)
        finally:
            if tracked:
                _TRANSFORMERS_IMPORTING.pop()
        for callback in self._callbacks:
            _run_safely(callback, module, name=module.__name__)
        while _DEFERRED and not _TRANSFORMERS_IMPORTING:
            _run_safely(_DEFERRED.pop(0), name=module.__name__)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PostImportFinder:
    """Meta-path finder that defers to the real finders and wraps the loader they return
    (for modules with callbacks, and for transformers' modules, to know when none is mid-import)."""

    def find_spec(self, fullname, path=None, target=None):
        callbacks = _POST_IMPORT.pop(fullname, None)
        if not callbacks and not _is_transformers(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _LoaderWithCallbacks(spec.loader, callbacks or [])
                return spec
        return None


def _add_compfair_include_path(manager_module):
    import functools
    import inspect

    task_manager = manager_module.TaskManager
    original_init = task_manager.__init__
    if getattr(original_init, "_compfair_wrapped", False):
        return
    signature = inspect.signature(original_init)
    if "include_path" not in signature.parameters:
        return

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        given = bound.arguments.get("include_path")
        given = [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
        ours = str(task_configs_dir())
        if ours not in [str(p) for p in given]:
            bound.arguments["include_path"] = [ours, *given]
        original_init(*bound.args, **bound.kwargs)

    __init__._compfair_wrapped = True
    task_manager.__init__ = __init__


PRUNED_MODEL_MODULES = ("compressors.pruned_gpt2", "compressors.pruned_llama")


def _register_pruned_models(_modeling_auto):
    """Register compfair's pruned config and model classes with AutoConfig / AutoModelForCausalLM.

    Runs once transformers' modeling_auto has been imported (lazily: only processes that use the Auto
    classes pay for importing the GPT-2 and Llama modelling code), and no transformers module is
    mid-import. Public API only: each module's `register_model_class` calls `AutoConfig.register`
    and `AutoModelForCausalLM.register`.
    """
    when_no_transformers_import(_import_and_register_pruned)


def _import_and_register_pruned():
    import importlib

    for name in PRUNED_MODEL_MODULES:
        module = importlib.import_module(name)
        register = getattr(module, "register_model_class", None)
        if register is not None:  # None: that module is being imported and registers itself at its end
            register()


def _register_quantized_model_type(_models_module):
    from lm_eval.api.registry import model_registry

    if "compfair-quantized" not in model_registry:
        model_registry.register("compfair-quantized", target="compressors.quantize:QuantizedHFLM")
    if "compfair-mlm" not in model_registry:  # masked LMs and sentence encoders (compfair_tasks/mlm.py)
        model_registry.register("compfair-mlm", target="compfair_tasks.mlm:MaskedLMScorer")


def _record_data_sources(task_module):
    """After a compfair task loads its documents, put each dataset's source and sha256 in its config.

    lm-eval passes the task's metadata to `custom_dataset` as keyword arguments (a copy), so the loader
    cannot write into the config that lands in the results file; this wrapper of the public
    `ConfigurableTask.download` can: results["configs"][task]["metadata"]["data_sources"].
    """
    import functools

    task_class = getattr(task_module, "ConfigurableTask", None)
    original = getattr(task_class, "download", None)
    if original is None or getattr(original, "_compfair_wrapped", False):
        return

    @functools.wraps(original)
    def download(self, *args, **kwargs):
        loader = getattr(getattr(self, "config", None), "custom_dataset", None)
        if not getattr(loader, "__module__", "").startswith("compfair_tasks"):
            return original(self, *args, **kwargs)
        from compfair_tasks import data

        with data.recording() as sources:
            result = original(self, *args, **kwargs)
        if self.config.metadata is None:
            self.config.metadata = {}
        self.config.metadata["data_sources"] = sources
        return result

    download._compfair_wrapped = True
    task_class.download = download


def _check_generation_settings(task_module):
    """Refuse generation settings that make a compfair task meaningless (max_gen_toks < 1: every
    continuation empty, so it would look least toxic). --gen_kwargs reach the task config only after
    its documents load, so the check wraps the public `build_all_requests`, which runs next."""
    import functools

    task_class = getattr(task_module, "ConfigurableTask", None)
    original = getattr(task_class, "build_all_requests", None)
    if original is None or getattr(original, "_compfair_wrapped", False):
        return

    @functools.wraps(original)
    def build_all_requests(self, *args, **kwargs):
        config = getattr(self, "config", None)
        if getattr(getattr(config, "custom_dataset", None), "__module__", "").startswith("compfair_tasks"):
            from compfair_tasks.models import check_generation_kwargs

            check_generation_kwargs(getattr(config, "task", "?"), getattr(config, "generation_kwargs", None))
        return original(self, *args, **kwargs)

    build_all_requests._compfair_wrapped = True
    task_class.build_all_requests = build_all_requests


def _refuse_int8_folders_in_hf(huggingface_module):
    """`--model hf pretrained=<int8 folder>` fails deep in transformers: say to use compfair-quantized."""
    import functools

    hflm = getattr(huggingface_module, "HFLM", None)
    original = getattr(hflm, "__init__", None)
    if original is None or getattr(original, "_compfair_wrapped", False):
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        pretrained = kwargs.get("pretrained", args[0] if args else None)
        if isinstance(pretrained, str) and os.path.isdir(pretrained):
            from compfair_tasks.models import refuse_quantized

            refuse_quantized(pretrained, "--model hf pretrained=")
        original(self, *args, **kwargs)

    __init__._compfair_wrapped = True
    hflm.__init__ = __init__


def _one_line_errors(_cli_module):
    """In the lm_eval command, a compfair bad-input error prints its one-line message, not a traceback."""
    previous = sys.excepthook

    def excepthook(kind, value, traceback):
        from compfair_tasks.errors import CompfairError

        if isinstance(value, CompfairError):
            sys.stderr.write(f"compfair: error: {value}\n")
            return
        previous(kind, value, traceback)

    sys.excepthook = excepthook


def install():
    if os.environ.get("COMPFAIR_NO_HOOK") == "1" or any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        return
    when_imported("lm_eval.tasks.manager", _add_compfair_include_path)
    when_imported("transformers.models.auto.modeling_auto", _register_pruned_models)
    when_imported("lm_eval.models", _register_quantized_model_type)
    when_imported("lm_eval.api.task", _record_data_sources)
    when_imported("lm_eval.api.task", _check_generation_settings)
    when_imported("lm_eval.models.huggingface", _refuse_int8_folders_in_hf)
    when_imported("lm_eval._cli", _one_line_errors)
    sys.meta_path.insert(0, _PostImportFinder())


install()
