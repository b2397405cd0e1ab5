"""CYGNO ER/NR discrimination (arXiv 2007.12508): toy LIME images, reconstruction, classifiers."""
