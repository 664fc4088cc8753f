"""The catalogue: images and profiles (image × profile → runtime spec), and GPU pools."""
