"""NEWSdm nuclear-emulsion study: a 3D CNN over (x, y, polarisation) (arXiv 2106.11995)."""
