"""Shared test helpers: generators of images and image sets (:mod:`tests.helpers.images`), the settings of
small, fast runs (:mod:`tests.helpers.runs`) and a fake web on 127.0.0.1 (:mod:`tests.helpers.fakeweb`).

Test modules import from here, never from one another.
"""
