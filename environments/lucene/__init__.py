"""Lucene's English analysis and BM25 ranking (as pyserini's defaults), in Python.

Shared by WebShop's product search and the search-QA retriever: `analyzer.py` (terms),
`bm25.py` (index, scores, hit order).
"""
