"""hubft"""
