"""Package data: the default Label Studio labeling config and annotator guidelines (copies of the checkout's
``annotation/`` folder, kept identical by tests/test_packaging.py)."""
