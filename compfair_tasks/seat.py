"""SEAT (May et al. 2019), the Sentence Encoder Association Test, as Bias Bench runs it (Meade et al. 2022).

One document per test (`sent-weat6`, ...: target sets X, Y and attribute sets A, B of template sentences).
Its one request is a `generate_until` *embedding query* (`compfair_tasks.mlm`): the model type
`compfair-mlm` answers with the sentences' embeddings as text, the only lm-eval request type that returns more
than a number. Embeddings: the last hidden state averaged over the sentence's tokens (Bias Bench; `--metadata
'{"seat_pooling": "cls"}'` takes the first token instead).

Per test: `effect_size_<test>` = (mean_X s(x,A,B) - mean_Y s(y,A,B)) / std_{X u Y} s(w,A,B), with s(w,A,B) =
mean_A cos(w,a) - mean_B cos(w,b) and std with ddof=1 (sent-bias `weat.py`), and `p_value_<test>`, the
one-sided permutation p-value (exact when there are at most `seat_permutations` partitions, else that many
seeded random partitions, default 100,000, seed `seat_seed` 0; see `stats.weat_permutation_p`). Per bias type
`abs_effect_size_<gender|race|religion>`: the mean absolute effect size over its tests (Bias Bench and Gonçalves
& Strubell report it), and `abs_effect_size` over all tests run.

Data: the gender and race tests ship (CC BY-NC 4.0, `data/seat/`); Bias Bench's religion tests carry no
license and are read only from `seat_religion_path` / `$COMPFAIR_DATA_DIR/seat_religion/` (skipped, with a
warning, when absent).
"""

from __future__ import annotations

import logging

import numpy as np

from compfair_tasks import data, stats

log = logging.getLogger(__name__)

SETS = ("targ1", "targ2", "attr1", "attr2")
TESTS = [(domain, test) for domain, tests in data.SEAT_TESTS.items() for test in tests]
DOMAINS = tuple(data.SEAT_TESTS)


def _test_docs(folder, domain: str, tests, source) -> list[dict]:
    docs = []
    for test in tests:
        path = folder / f"sent-{test}.jsonl"
        raw = data.read_json(path, "SEAT test file")
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), dict) and raw[k].get("examples") for k in SETS):
            raise data.DataFormatError(f"{path}: not a SEAT test (needs targ1, targ2, attr1, attr2 with examples); "
                                       "re-copy the sent-bias file")
        docs.append({"id": test, "domain": domain, "data_source": str(source),
                     "categories": [raw[k]["category"] for k in SETS],
                     "sentences": [list(map(str, raw[k]["examples"])) for k in SETS]})
    return docs


def load(**metadata):
    from compfair_tasks import mlm_tasks

    mlm_tasks.check_encoder(metadata, "compfair_seat")
    source = data.resolve("seat", data.path_from_metadata("seat", metadata), allow_hub=False)
    docs = _test_docs(source.path, "gender", data.SEAT_TESTS["gender"], source)
    docs += _test_docs(source.path, "race", data.SEAT_TESTS["race"], source)
    try:
        religion = data.resolve("seat_religion", data.path_from_metadata("seat_religion", metadata), allow_hub=False)
        docs += _test_docs(religion.path, "religion", data.SEAT_TESTS["religion"], religion)
    except data.DataNotFoundError as error:
        log.warning("compfair_seat: the religion tests are not shipped (no license) and were not found, so they are "
                    "skipped: %s", error)
    pooling = str(metadata.get("seat_pooling", "mean"))
    from compfair_tasks.mlm import POOLINGS, query

    if pooling not in POOLINGS:
        raise data.MetadataKeyError(f"seat_pooling={pooling!r} is not a pooling; use one of {', '.join(POOLINGS)}")
    for doc in docs:
        doc["query"] = query({"embed": [s for group in doc["sentences"] for s in group], "pooling": pooling})
        doc["permutations"] = int(metadata.get("seat_permutations", 100_000))
        doc["seed"] = int(metadata.get("seat_seed", 0))
    return data.to_dataset(docs, f"SEAT tests in {source}")


def doc_to_text(doc: dict) -> str:
    return doc["query"]


def scores(embeddings: np.ndarray, sizes, permutations: int, seed: int) -> tuple[float, float, bool]:
    """(effect size, p-value, exact) of one test from the embeddings of its X, Y, A, B sentences in order."""
    x, y, a, b = np.split(embeddings, np.cumsum(sizes)[:-1])
    p, exact = stats.weat_permutation_p(x, y, a, b, n_samples=permutations, seed=seed)
    return stats.weat_effect_size(x, y, a, b), p, exact


def process_results(doc: dict, results) -> dict:
    from compfair_tasks.mlm import decode_embeddings

    embeddings = decode_embeddings(results[0])
    sizes = [len(group) for group in doc["sentences"]]
    if embeddings.shape[0] != sum(sizes):
        raise ValueError(f"SEAT {doc['id']}: {embeddings.shape[0]} embeddings for {sum(sizes)} sentences")
    effect, p, _ = scores(embeddings, sizes, doc["permutations"], doc["seed"])
    tests = [test for _, test in TESTS]
    return {**stats.subgroup_values("effect_size", effect, {doc["id"]}, tests),
            **stats.subgroup_values("p_value", p, {doc["id"]}, tests),
            **stats.subgroup_values("abs_effect_size", abs(effect), {doc["domain"]}, DOMAINS),
            "abs_effect_size": abs(effect), "n_tests": 1.0}
