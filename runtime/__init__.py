"""fuselite.runtime"""
