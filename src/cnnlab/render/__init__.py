"""The rendering layer that every report shares: one Jinja environment, Markdown, names on disk.

* :mod:`~cnnlab.render.html`: report blocks as one self-contained HTML page (``templates/``);
* :mod:`~cnnlab.render.markdown`: the same blocks as Markdown;
* :mod:`~cnnlab.render.naming`: unique model names and file-name-safe stems.

What a report says lives with its job (:mod:`cnnlab.bench.report`, :mod:`cnnlab.review.report`); how it
is drawn lives here.
"""
