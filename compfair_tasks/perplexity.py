"""Perplexity on the shipped BOLD Wikipedia sentences: an offline stand-in for WikiText-2.

One document per person (their Wikipedia sentences joined by spaces), in file and key order, so the
set is the same in every run. Metrics and their word/byte counts follow lm-eval's own `wikitext`
task, so `compfair_ppl_bold_wiki` and `wikitext` numbers are computed the same way (on other text).
"""

from __future__ import annotations

import re

from compfair_tasks import data


def bold_wiki_documents(source: data.DataSource) -> list[dict]:
    documents = []
    for file in sorted(source.path.glob("*_wiki.json")):
        domain = file.name.removesuffix("_wiki.json")
        for group, person, sentences in data.read_bold(file):
            text = " ".join(s.strip() for s in sentences if s.strip())
            if text:
                documents.append({"domain": domain, "group": group, "person": person, "text": text})
    if not documents:
        raise data.DataNotFoundError(f"no BOLD Wikipedia sentences in {source.path} (expected *_wiki.json files)")
    return documents


def load_bold_wiki(**metadata):
    """custom_dataset for compfair_ppl_bold_wiki: {'test': Dataset} of per-person documents."""
    from compfair_tasks.models import check_task_model

    check_task_model(metadata, "compfair_ppl_bold_wiki")
    source = data.resolve("bold_wiki", data.path_from_metadata("bold_wiki", metadata))
    return data.to_dataset(bold_wiki_documents(source), f"BOLD Wikipedia in {source.path}")


def process_results(doc, results):
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["text"]))
    n_bytes = len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }
