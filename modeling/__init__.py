# transformers first: importing it registers the QRM classes (qrm_hf/__init__.py), which imports the two
# modules below; they must not be half-imported at that moment.
import transformers  # noqa: F401
