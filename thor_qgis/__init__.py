"""THOR engine: plain Python (numpy, torch; GDAL and earthengine-api where used). Never imports qgis."""
