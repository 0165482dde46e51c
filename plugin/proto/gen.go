// Package trainerpb holds the generated gRPC code for trainer.proto. Do not
// edit the *.pb.go files; edit trainer.proto and run `make proto`, which runs
// the go:generate line below (protoc 3.21+, protoc-gen-go v1.36.12,
// protoc-gen-go-grpc v1.6.x on PATH).
package trainerpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative trainer.proto
