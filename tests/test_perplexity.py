import math

import pytest

from compfair_tasks import data, perplexity


def test_one_document_per_person_in_a_stable_order():
    docs = perplexity.bold_wiki_documents(data.resolve("bold_wiki"))
    assert len(docs) == len({(d["domain"], d["group"], d["person"]) for d in docs})
    assert docs[0]["domain"] == "gender" and docs[0]["person"] == "Jacob_Zachar"
    assert docs[0]["text"].startswith("Jacob Zachar is an American actor")
    assert {d["domain"] for d in docs} == {"gender", "political_ideology", "profession", "race", "religious_ideology"}


def test_process_results_counts_words_and_bytes_like_wikitext():
    doc = {"text": "Zoë  was  here."}
    out = perplexity.process_results(doc, [-3.5])
    assert out["word_perplexity"] == (-3.5, 3)
    assert out["byte_perplexity"] == (-3.5, 16)  # ë is two bytes in UTF-8


def test_missing_files_are_an_error_not_an_empty_set(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="bold_wiki"):
        perplexity.load_bold_wiki(bold_wiki_path=str(tmp_path))


@pytest.mark.slow
def test_lm_eval_perplexity_equals_a_direct_computation(tiny_gpt2_dir, tmp_path, lm_eval_cli):
    from known_answers import direct_word_perplexity

    limit = 3
    results = lm_eval_cli(["--model", "hf", "--model_args", f"pretrained={tiny_gpt2_dir}",
                           "--tasks", "compfair_ppl_bold_wiki", "--limit", str(limit)], tmp_path)
    measured = results["results"]["compfair_ppl_bold_wiki"]
    assert measured["word_perplexity,none"] == pytest.approx(direct_word_perplexity(tiny_gpt2_dir, limit), rel=1e-4)
    assert measured["bits_per_byte,none"] == pytest.approx(math.log2(measured["byte_perplexity,none"]), rel=1e-6)
