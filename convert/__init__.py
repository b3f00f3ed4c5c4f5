"""fuselite.convert"""
