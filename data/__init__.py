"""fuselite.data: the TensorFlow-free ground floor for images and their tags.

* :mod:`fuselite.data.dataset` - :class:`ImageTextData` (images, tags, captions) and :class:`Splits`;
* :mod:`fuselite.data.readers` - class folders, CSV/JSONL manifests, COCO JSON, Fashion-MNIST IDX;
* :mod:`fuselite.data.scenes` - the embedded synthetic "scenes" generator;
* :mod:`fuselite.data.sources` - which images a run uses and how they are split;
* :mod:`fuselite.data.video` - synthetic-scenes videos with known tags (demo, tests, bench).

Only numpy and OpenCV: training, bench, the demo and the runtime's tests all read
data through here, so none of them needs TensorFlow to see a run's images.
"""
