"""Suite files shipped with lmbench; ``lmbench run --suite NAME`` finds them here."""
