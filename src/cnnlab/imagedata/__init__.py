"""Images as data: decoding, preprocessing, datasets (folders, manifests, stored sets), ImageNet layouts, labels, splits, hashes.

* :mod:`~cnnlab.imagedata.decode`: any file -> an RGB image, or a reason why not;
* :mod:`~cnnlab.imagedata.preprocess`: the preprocessing that travels with the weights;
* :mod:`~cnnlab.imagedata.datasets`: folder walks, class-folder trees and manifests;
* :mod:`~cnnlab.imagedata.filenames`: which file names are images, and which are litter;
* :mod:`~cnnlab.imagedata.sources`: Hugging Face datasets, Parquet files and WebDataset shards, listed with their labels;
* :mod:`~cnnlab.imagedata.records`: one record of such a dataset read by its name (``shard.tar#KEY``), in any process;
* :mod:`~cnnlab.imagedata.shards`: a WebDataset shard's samples, indexed from its tar headers;
* :mod:`~cnnlab.imagedata.imagenet_val`: ImageNet's validation layouts and ImageNet-ReaL labels;
* :mod:`~cnnlab.imagedata.labels`: folder names -> ImageNet classes through WordNet 3.0;
* :mod:`~cnnlab.imagedata.splits`: stratified, deterministic splits that keep near duplicates together;
* :mod:`~cnnlab.imagedata.hashes`: content digests and perceptual hashes;
* :mod:`~cnnlab.imagedata.demo`: the built-in demo photos.
"""
