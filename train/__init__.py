"""fuselite.train"""
