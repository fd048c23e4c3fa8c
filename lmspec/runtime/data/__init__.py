"""The data layer: sources -> tokenised cache -> the stream of examples a stage reads.

    sources    read_records / iter_texts: builtin corpora, text globs, JSON lines, streaming
    order      the validation split and the epoch order as pure functions of (seed, index)
    cache      the on-disk token files (nanoGPT's .bin manner) and the memory-mapped `Split`
    prepare    prepare_dataset: tokenise once, atomically, keyed by everything it depends on
    loader     ExampleStream: windows, documents or records, epoch by epoch, resumable
    builtin    the small corpora that ship with lmspec

docs/data.md is the user's guide to all of it.
"""

from lmspec.runtime.data.cache import Split, token_dtype
from lmspec.runtime.data.loader import ExampleStream
from lmspec.runtime.data.prepare import Dataset, open_dataset, prepare_dataset
from lmspec.runtime.data.sources import FIELDS, iter_texts, read_records

__all__ = ["Dataset", "Split", "ExampleStream", "prepare_dataset", "open_dataset", "iter_texts", "read_records",
           "FIELDS", "token_dtype"]
