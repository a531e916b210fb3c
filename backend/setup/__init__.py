"""Setting the product up: the backend's Python environment, the model-asset cache and its verified downloads.

Standard library only (the add-on's Install Backend and Download Assets buttons use it from Blender's Python).
"""
