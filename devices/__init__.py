"""fuselite.devices"""
