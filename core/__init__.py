"""fuselite: fused image-text annotation models for edge boards.

The package is split the way the product flows:

* ``fuselite.train``   - trains the fused image-text model (TensorFlow, host side);
* ``fuselite.convert`` - quantizes and prunes it into self-describing TFLite bundles;
* ``fuselite.runtime`` - annotates camera streams on a board (no TensorFlow);
* ``fuselite.bench``   - measures every bundle's size against accuracy and latency;
* ``fuselite.devices`` - board profiles, on-board setup and arm64 verification.

The modules of this package itself are the ground floor every stage imports, and
they import nothing heavier than numpy: ``fuselite.bundle`` and ``fuselite.tokenizer``
(the contract shared by host and device), ``fuselite.scoring`` (the label scorer),
``fuselite.interpreter`` (the one place that imports a TFLite interpreter),
``fuselite.flatbuffer`` (the one TFLite flatbuffer reader), ``fuselite.metrics`` and
``fuselite.files``.
"""

__version__ = "0.1.0"
