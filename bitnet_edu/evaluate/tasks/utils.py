"""Datasets for the offline task YAML files: lm-eval calls these (``custom_dataset``), and
they read the JSON data next to them, so no path depends on where the package lives."""

import json
from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data"


def _dataset(name):
    from datasets import Dataset

    docs = json.loads((_DATA / name).read_text(encoding="utf-8"))["docs"]
    return {"test": Dataset.from_list(docs)}


def next_verse(**kwargs):
    return _dataset("next_verse.json")


def cloze(**kwargs):
    return _dataset("cloze.json")


def heldout(**kwargs):
    return _dataset("heldout.json")
