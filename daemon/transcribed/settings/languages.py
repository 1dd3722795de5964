"""The languages Qwen3-ASR knows, and how a setting names one: an ISO code or an English name.

One table for every engine: the resident model's processor and the vLLM servers hold the
same model, and the start-up checks must not wait for torch to say that "jp" is not a
language. tests/test_settings.py keeps it equal to transformers' own table
(`LANGUAGE_CODE_TO_NAME` of the Qwen3-ASR processor).
"""

import difflib

QWEN3_ASR_LANGUAGES: dict[str, str] = {
    "ar": "Arabic",
    "yue": "Cantonese",
    "zh": "Chinese",
    "cs": "Czech",
    "da": "Danish",
    "nl": "Dutch",
    "en": "English",
    "fil": "Filipino",
    "fi": "Finnish",
    "fr": "French",
    "de": "German",
    "el": "Greek",
    "hi": "Hindi",
    "hu": "Hungarian",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "mk": "Macedonian",
    "ms": "Malay",
    "fa": "Persian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "es": "Spanish",
    "sv": "Swedish",
    "th": "Thai",
    "tr": "Turkish",
    "vi": "Vietnamese",
}

# What people write instead: country codes, old codes, other names. Only ever suggested, never
# taken silently: "se" may be Swedish or Northern Sami, "in" a preposition.
_MEANT = {
    "jp": "ja",
    "jap": "ja",
    "cn": "zh",
    "zho": "zh",
    "chi": "zh",
    "mandarin": "zh",
    "kr": "ko",
    "gr": "el",
    "se": "sv",
    "dk": "da",
    "cz": "cs",
    "ir": "fa",
    "farsi": "fa",
    "tl": "fil",
    "tagalog": "fil",
    "in": "id",
    "br": "pt",
    "eng": "en",
    "ger": "de",
    "deu": "de",
    "fre": "fr",
    "fra": "fr",
    "spa": "es",
    "rus": "ru",
    "jpn": "ja",
    "kor": "ko",
    "vn": "vi",
    # names in the language itself
    "deutsch": "de",
    "français": "fr",
    "francais": "fr",
    "español": "es",
    "espanol": "es",
    "italiano": "it",
    "português": "pt",
    "portugues": "pt",
    "nederlands": "nl",
    "svenska": "sv",
    "dansk": "da",
    "polski": "pl",
    "suomi": "fi",
    "magyar": "hu",
    "türkçe": "tr",
    "中文": "zh",
    "普通话": "zh",
    "粤语": "yue",
    "日本語": "ja",
    "한국어": "ko",
}
_BY_NAME = {name.lower(): code for code, name in QWEN3_ASR_LANGUAGES.items()}


def language_code(text: str) -> str:
    """The ISO code of the language `text` names (a code or an English name, any case);
    ValueError with the closest known codes otherwise."""
    wanted = text.strip().lower()
    if wanted in QWEN3_ASR_LANGUAGES:
        return wanted
    if wanted in _BY_NAME:
        return _BY_NAME[wanted]
    raise ValueError(f"{text!r} is not a language Qwen3-ASR knows; {_suggestion(wanted)}")


def language_name(code: str) -> str:
    """The English name of a known code ("ja" -> "Japanese")."""
    return QWEN3_ASR_LANGUAGES[code]


def _suggestion(wanted: str) -> str:
    close = _closest(wanted)
    if close:
        named = " or ".join(f"{code} ({QWEN3_ASR_LANGUAGES[code]})" for code in close)
        return f"did you mean {named}?"
    return "it knows " + ", ".join(sorted(QWEN3_ASR_LANGUAGES)) + " (or their English names)"


def _closest(wanted: str) -> list[str]:
    """At most two codes a mistyped `wanted` probably meant, best first."""
    region = wanted.replace("_", "-").partition("-")[0]  # en-US, zh_CN, pt-BR
    meant = [_MEANT.get(wanted), region, _MEANT.get(region)]
    known = [code for code in meant if code in QWEN3_ASR_LANGUAGES]
    if not known:  # a misspelt name: "japanse", "portugese"
        names = difflib.get_close_matches(wanted, list(_BY_NAME), n=2, cutoff=0.75)
        known = [_BY_NAME[name] for name in names]
    return list(dict.fromkeys(known))[:2]
