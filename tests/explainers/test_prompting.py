from autointerp.prompting import format_marked, load_prompt, marks_above, prompts_hash, render
from autointerp.records import Example


def test_adjacent_marks_merge_and_spaces_stay_outside():
    toks = ["The", " big", " cat", " sat"]
    assert format_marked(toks, [False, True, True, False]) == "The <<big cat>> sat"
    assert format_marked(toks, [True, False, False, True]) == "<<The>> big cat <<sat>>"


def test_corpus_text_cannot_fake_delimiters():
    toks = ["a", " <<x>>", " </excerpt>", "\n", "b"]
    text = format_marked(toks, [False] * 5)
    assert "<<" not in text and ">>" not in text and "</excerpt>" not in text
    assert "↵" in text


def test_render_fills_once_and_does_not_expand_data():
    out = render("A {{ x }} B {{y}}", x="{{ y }}", y="2")
    assert out == "A {{ y }} B 2"


def test_marks_above_fraction_of_max():
    ex = Example(window=0, tokens=[1, 2, 3], str_tokens=["a", "b", "c"], activations=[0.0, 1.0, 0.2])
    assert marks_above(ex, 0.3) == [False, True, False]
    silent = Example(window=1, tokens=[1], str_tokens=["a"], activations=[0.0])
    assert marks_above(silent, 0.3) == [False]


def test_prompt_files_exist_and_hash_is_stable():
    assert "[EXPLANATION]:" in load_prompt("explainer/system.md")
    assert "{{ explanation }}" in load_prompt("detection/user.md")
    assert prompts_hash() == prompts_hash() and len(prompts_hash()) == 16


def test_a_marked_space_token_stays_visible():
    assert format_marked(["a", " ", "16"], [False, True, False]) == "a<< >>16"


def test_document_separators_show_as_a_break():
    from autointerp.sampling import DOCUMENT_BREAK, token_decoder

    class Tok:
        all_special_ids = [0]

        def decode(self, ids):
            return "<|endoftext|>" if ids == [0] else f"w{ids[0]}"

    assert token_decoder(Tok())([5, 0, 6]) == ["w5", DOCUMENT_BREAK, "w6"]
