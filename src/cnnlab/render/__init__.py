"""The rendering layer that every report shares: one Jinja environment, Markdown, names on disk.

* :mod:`~cnnlab.render.html`: the one Jinja environment (``templates/``: bench's ``report.html.j2``,
  review's ``review.html.j2``), and report blocks as one self-contained HTML page;
* :mod:`~cnnlab.render.thumbnails`: small JPEG copies of images as ``data:`` URIs, for every page that shows them;
* :mod:`~cnnlab.render.markdown`: the same blocks as Markdown;
* :mod:`~cnnlab.render.naming`: unique model names and file-name-safe stems.

What a report says lives with its job (:mod:`cnnlab.bench.report`, :mod:`cnnlab.review.report`); how it
is drawn lives here.
"""
