"""Demo data shipped with srcompress: a few public-domain/CC0 images and a small teacher.

Sources and licences: examples/README.md.
"""
