"""lm_eval finds compfair's tasks with no flags: the startup hook, the wheel layout, the CLI."""

import os
import subprocess
import sys
import zipfile

import pytest

from compfair_tasks._hook import task_configs_dir
from conftest import OFFLINE_ENV, REPO_ROOT


def _python(code: str, **env) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **OFFLINE_ENV, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


LIST_TASKS = "from lm_eval.tasks import TaskManager; print(sorted(t for t in TaskManager().all_tasks if 'compfair' in t))"


def test_task_manager_sees_compfair_tasks_without_include_path():
    assert "compfair_ppl_bold_wiki" in _python(LIST_TASKS)


def test_hook_can_be_switched_off_and_include_path_is_the_fallback():
    assert _python(LIST_TASKS, COMPFAIR_NO_HOOK="1") == "[]"
    code = f"from lm_eval.tasks import TaskManager; print('compfair_ppl_bold_wiki' in TaskManager(include_path={str(task_configs_dir())!r}).all_tasks)"
    assert _python(code, COMPFAIR_NO_HOOK="1") == "True"


def test_a_users_include_path_is_kept_and_overrides_ours(tmp_path):
    """A user's task of the same name as ours (compfair_ppl_bold_wiki) wins; their other tasks are found too."""
    (tmp_path / "docs.jsonl").write_text('{"text": "one user document"}\n{"text": "and another"}\n')
    task = ("dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
            "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{{{text}}}}'\n"
            "metric_list:\n  - metric: word_perplexity\n").format(tmp_path / "docs.jsonl")
    (tmp_path / "mine.yaml").write_text("task: compfair_ppl_bold_wiki\n" + task)
    (tmp_path / "other.yaml").write_text("task: my_task\n" + task)
    code = (f"from lm_eval.tasks import TaskManager, get_task_dict; tm = TaskManager(include_path={str(tmp_path)!r}); "
            "task = get_task_dict(['compfair_ppl_bold_wiki'], tm)['compfair_ppl_bold_wiki']; "
            "print([d['text'] for d in task.test_docs()], 'my_task' in tm.all_tasks, "
            f"{str(task_configs_dir())!r} in tm.include_path)")
    assert _python(code) == "['one user document', 'and another'] True True"


def test_wheel_ships_the_hook_the_yaml_and_the_data(tmp_path):
    hatchling_wheel = pytest.importorskip("hatchling.builders.wheel")
    wheel = next(hatchling_wheel.WheelBuilder(str(REPO_ROOT)).build(directory=str(tmp_path), versions=["standard"]))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "compfair.pth" in names
    assert "compfair_tasks/task_configs/perplexity/compfair_ppl_bold_wiki.yaml" in names
    assert {"compfair_tasks/data/stereoset/dev.json", "compfair_tasks/data/stereoset/LICENSE",
            "compfair_tasks/data/winobias/LICENSE", "compfair_tasks/data/crows_pairs/LICENSE"} <= names
    assert "compfair_tasks/_build_hook.py" not in names

    # Unpack it as a site dir and let its own .pth start the hook (the checkout's hook is kept off).
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import os, site, sys\n"
        # drop the checkout (the editable install's path), keep the environment's site-packages (.venv in it)
        f"sys.path = [p for p in sys.path if p and os.path.realpath(p) != {str(REPO_ROOT)!r}]\n"
        "del os.environ['COMPFAIR_NO_HOOK']\n"
        "for name in [m for m in sys.modules if m.startswith('compfair_tasks')]: del sys.modules[name]\n"
        f"site.addsitedir({str(site)!r})\n"
        "from compfair_tasks._hook import task_configs_dir\n"
        "from lm_eval.tasks import TaskManager\n"
        "print(task_configs_dir(), 'compfair_ppl_bold_wiki' in TaskManager().all_tasks)\n"
    )
    assert _python(code, COMPFAIR_NO_HOOK="1") == f"{site / 'compfair_tasks' / 'task_configs'} True"


@pytest.mark.slow
@pytest.mark.newest
def test_lm_eval_cli_lists_and_runs_compfair_tasks(tiny_gpt2_dir, tmp_path, lm_eval_cli):
    listed = subprocess.run([sys.executable, "-m", "lm_eval", "ls", "tasks"], capture_output=True, text=True,
                            env={**os.environ, **OFFLINE_ENV}, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "compfair_ppl_bold_wiki" in listed.stdout
    results = lm_eval_cli(["--model", "hf", "--model_args", f"pretrained={tiny_gpt2_dir}",
                           "--tasks", "compfair_ppl_bold_wiki", "--limit", "4"], tmp_path)
    from known_answers import direct_word_perplexity

    assert results["results"]["compfair_ppl_bold_wiki"]["word_perplexity,none"] == pytest.approx(
        direct_word_perplexity(tiny_gpt2_dir, 4), rel=1e-4)



REGISTERED = ("from transformers.models.auto import configuration_auto as c, modeling_auto as m\n"
              "from compfair_tasks._hook import PRUNED_MODEL_MODULES\n"
              "print(type(c.CONFIG_MAPPING).__module__ == c.__name__, 'pruned_gpt2' in c.CONFIG_MAPPING, "
              "'pruned_llama' in c.CONFIG_MAPPING, "
              "sorted(k.model_type for k in m.MODEL_FOR_CAUSAL_LM_MAPPING._extra_content))")


@pytest.mark.slow  # three interpreters importing transformers
@pytest.mark.parametrize("first", ["import transformers.models.llama.modeling_llama",  # imports modeling_auto half way
                                   "from transformers import AutoModelForCausalLM",
                                   "import lm_eval.models.huggingface"])
def test_hook_registers_pruned_classes_through_public_api(first):
    """AutoConfig/AutoModelForCausalLM.register, once modeling_auto is in; transformers' own mapping class."""
    assert _python(f"{first}\n{REGISTERED}") == "True True True ['pruned_gpt2', 'pruned_llama']"
    if first.startswith("from"):
        assert _python(f"{first}\n{REGISTERED}", COMPFAIR_NO_HOOK="1") == "True False False []"


def test_hook_imports_nothing_heavy_at_start_up():
    assert _python("import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in "
                   "('transformers', 'torch', 'compressors', 'lm_eval')))") == "[]"
