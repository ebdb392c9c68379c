"""Generation settings per call: ``llm.predict(prompt, **generate_kwargs)`` as users of the earlier plugin wrote them."""

from __future__ import annotations

import pytest

from superduper_transformers import LLM


@pytest.fixture
def llm(tiny_model_dir):
    # The untrained base: what is checked here is how settings reach `generate`, not answers.
    return LLM("tiny-base", model_name_or_path=tiny_model_dir, predict_kwargs={"max_new_tokens": 4})


@pytest.fixture
def new_tokens(llm, monkeypatch):
    """The number of tokens each ``generate`` call of ``llm`` added (decoded text may merge bytes)."""
    llm.predict("0+0=", max_new_tokens=1)  # the first call sets the component up (and loads it)
    model, _ = llm._get_pipeline()
    generate, counts = model.generate, []

    def counting(**kwargs):
        out = generate(**kwargs)
        counts.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(model, "generate", counting)
    return counts


def test_per_call_settings_win_over_predict_kwargs_and_the_defaults(llm, new_tokens):
    assert llm.generate_kwargs() == {"max_new_tokens": 4, "do_sample": False}
    assert llm.generate_kwargs(max_new_tokens=1, num_beams=2) == {
        "max_new_tokens": 1,
        "do_sample": False,
        "num_beams": 2,
    }
    four = llm.predict("5+1=")
    one = llm.predict("5+1=", max_new_tokens=1)
    beams = llm.predict_batches(["5+1=", "7+3="], max_new_tokens=2, do_sample=False, num_beams=2)
    again = llm.predict("5+1=")
    # the untrained model generates until max_new_tokens (it never samples EOS greedily here)
    assert new_tokens == [4, 1, 2, 4]
    assert len(beams) == 2 and again == four != one  # per-call settings do not stick


def test_an_unknown_generation_keyword_is_named(llm):
    with pytest.raises(ValueError) as e:
        llm.predict("5+1=", max_new_tokens=1, temprature=0.5)
    message = str(e.value)
    assert "`temprature`=0.5 (from this call)" in message and "tiny-base" in message
    assert "GenerationConfig" in message

    llm.predict_kwargs = {"max_new_tokens": 1, "bogus": True}
    with pytest.raises(ValueError, match=r"`bogus`=True \(from `predict_kwargs`\)"):
        llm.predict_batches(["5+1="])
