"""Markdown plans turned into run spec drafts: `parse` (Markdown to phase items), `infer` (paths, scope,
deliverables and validation, each with where it came from), `draft` (the `RunSpec` draft and warnings)."""
