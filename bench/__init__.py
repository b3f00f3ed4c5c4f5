"""fuselite.bench"""
