"""Known answers for the lm_eval end-to-end tests: a task's metrics computed from the model's own log-likelihoods.

`direct_metrics` builds a compfair preference task with lm-eval (its docs, choices, process_results and
aggregations) but computes every candidate's log-likelihood with one plain forward pass of the model, with
HFLM's context/continuation split. An lm_eval run whose numbers equal these scored the model it was given,
with the token counts and scoring rule the task promises.
"""

from __future__ import annotations

from collections import defaultdict


def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) for a causal LM, split as HFLM splits it (empty context: the prefix token)."""
    import torch

    if context == "":
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        context_ids, continuation_ids = [prefix], tokenizer(continuation, add_special_tokens=False)["input_ids"]
    else:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = tokenizer(context + continuation)["input_ids"]
        split = len(tokenizer(context)["input_ids"])
        context_ids, continuation_ids = whole[:split], whole[split:]
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    return logprobs[torch.arange(len(targets)), targets][-len(continuation_ids):].sum().item()


def direct_metrics(task_name: str, model, tokenizer, metadata: dict, limit: int) -> dict[str, float]:
    """The task's aggregated metrics over its first `limit` docs (what `lm_eval --limit` takes)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict([task_name], TaskManager(metadata=metadata))[task_name]
    assert task.config.output_type == "multiple_choice", task_name
    values = defaultdict(list)
    model.eval()
    for doc in list(task.test_docs())[:limit]:
        context = task.doc_to_text(doc)
        results = [(direct_loglikelihood(model, tokenizer, context, task.config.target_delimiter + choice), False)
                   for choice in task.doc_to_choice(doc)]
        for metric, value in task.process_results(doc, results).items():
            values[metric].append(value)
    aggregations = task.aggregation()
    return {metric: aggregations[metric](items) for metric, items in values.items()}


def direct_word_perplexity(model_dir, limit: int) -> float:
    """compfair_ppl_bold_wiki's word perplexity over its first `limit` documents, from one forward pass per
    document (each is shorter than the model's window, so lm-eval's rolling windows condition every token on
    EOS + the tokens before it)."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compfair_tasks import data, perplexity

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total_ll, total_words = 0.0, 0
    for doc in perplexity.bold_wiki_documents(data.resolve("bold_wiki"))[:limit]:
        ids = tokenizer(doc["text"])["input_ids"]
        assert len(ids) < 511, "a document longer than one rolling window: compute the windows"
        inputs = torch.tensor([[tokenizer.eos_token_id, *ids]])
        with torch.no_grad():
            logprobs = model(inputs).logits.log_softmax(-1)[0, :-1]
        total_ll += logprobs.gather(1, inputs[0, 1:, None]).sum().item()
        total_words += perplexity.process_results(doc, [0.0])["word_perplexity"][1]
    return math.exp(-total_ll / total_words)
