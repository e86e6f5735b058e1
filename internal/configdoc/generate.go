package configdoc

//go:generate go run ./cmd ../../README.md
