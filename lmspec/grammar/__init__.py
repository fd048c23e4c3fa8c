"""The language front end: the lark grammar, the parser and the typed AST. Imports no torch."""

from lmspec.grammar import ast
from lmspec.grammar.parser import LANGUAGE_VERSION, parse, parse_file

__all__ = ["ast", "parse", "parse_file", "LANGUAGE_VERSION"]
