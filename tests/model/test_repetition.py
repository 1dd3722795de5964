"""Repetition loops are collapsed; ordinary repetition in speech is left alone."""

from transcribed.model.repetition import collapse_repetitions, remove_context_echo


def test_a_short_unit_repeated_many_times_is_collapsed() -> None:
    assert collapse_repetitions("ok " + "ha" * 50 + " end") == ("ok ha end", True)
    assert collapse_repetitions("我们" * 30) == ("我们", True)


def test_a_sentence_loop_is_collapsed() -> None:
    sentence = "We will review the budget next week. "
    text = "Hello. " + sentence * 12 + "Bye."
    assert collapse_repetitions(text) == ("Hello. " + sentence + "Bye.", True)


def test_ordinary_repetition_is_speech() -> None:
    for text in ("no, no, no, no!", "really really good", "ha ha ha", "1 2 3 1 2 3", ""):
        assert collapse_repetitions(text) == (text, False)


def test_context_echoed_into_the_text_is_removed_but_short_terms_stay() -> None:
    context = "Glossary: Kubernetes, Grafana, Prometheus\nAcme quarterly budget"
    echoed = "Glossary: Kubernetes, Grafana, Prometheus We moved Grafana to Kubernetes."
    assert remove_context_echo(echoed, context) == ("We moved Grafana to Kubernetes.", True)
    assert remove_context_echo("Kubernetes is up.", "Kubernetes") == ("Kubernetes is up.", False)
    assert remove_context_echo("anything", None) == ("anything", False)
