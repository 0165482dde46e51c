// Package plugin is the contract between the ollama-tune host and its trainer
// plugins, and both ends of it: the host side (discover, launch, stream,
// cancel, crash reports) and the serve side (a Runner-based Trainer served
// over gRPC by hashicorp/go-plugin).
//
// The trainer runs in its own process because it is the part that can crash:
// a CUDA fault, the OOM killer or a kill -9 takes the plugin down, and the host
// survives to say what happened, which checkpoint is safe, and how to resume.
//
// This file is the contract, in the shape of go-plugin's
// examples/grpc/shared/interface.go; grpc.go adapts it to trainer.proto.
package plugin

import (
	"context"
	"errors"
	"fmt"
)

// ProtocolVersion is the version of the trainer protocol (trainer.proto plus
// the meaning of its fields). A host and a plugin of different versions
// refuse each other at the go-plugin handshake. Bump it on any incompatible
// change to trainer.proto.
const ProtocolVersion = 1

// Trainer is what a trainer plugin serves and what the host calls.
type Trainer interface {
	// Capabilities describes the backend and the devices it sees.
	Capabilities(ctx context.Context) (Capabilities, error)

	// Train starts one fine-tune and returns its events. The stream ends
	// (io.EOF) after a Finished or a Failed event. Cancelling ctx abandons
	// the run without a checkpoint; use Cancel for a graceful stop.
	Train(ctx context.Context, req TrainRequest) (EventStream, error)

	// Cancel stops the running fine-tune. CancelGraceful asks the trainer to
	// save a checkpoint first; the run then ends with CheckpointSaved and
	// Failed{Code: CodeCancelled}. On the host, CancelImmediate kills the
	// plugin process (it may be stuck in a kernel); in a plugin it stops the
	// run without saving.
	Cancel(ctx context.Context, mode CancelMode) error

	// Generate runs the base model (plus an optional adapter) on a prompt.
	Generate(ctx context.Context, req GenerateRequest) (GenerateResponse, error)
}

// EventStream yields a run's events in order; Recv returns io.EOF after the
// last one.
type EventStream interface {
	Recv() (Event, error)
}

// Capabilities is what a plugin reports about itself and its machine.
type Capabilities struct {
	Backend         string // "cpu", "cuda"
	Devices         []Device
	ComputeDTypes   []DType
	Optimizers      []string // adamw_torch, adamw_8bit, paged_adamw_8bit, ...
	ProtocolVersion int
	TrainerVersion  string
}

// Device is one compute device a backend can train on.
type Device struct {
	Name        string
	TotalMemory uint64 // bytes
	FreeMemory  uint64 // bytes; 0 when unknown
	Detail      string // "2 cores", "sm_90, driver 550.54"
}

// DType is a compute type a backend supports.
type DType struct {
	Name     string // fp32, bf16, fp16
	Emulated bool   // computed in another type and rounded to this one
}

func (d DType) String() string {
	if d.Emulated {
		return d.Name + " (emulated)"
	}
	return d.Name
}

// TrainRequest starts a fine-tune. Config is the finetune config as JSON; the
// plugin validates it and answers an invalid one with Failed{CodeInvalidConfig}.
type TrainRequest struct {
	Config    []byte
	OutputDir string
	Resume    string // checkpoint directory to continue from, or ""
}

// CancelMode says how to stop a run.
type CancelMode int

const (
	CancelGraceful  CancelMode = iota // save a checkpoint, then stop
	CancelImmediate                   // stop now
)

func (m CancelMode) String() string {
	switch m {
	case CancelGraceful:
		return "graceful"
	case CancelImmediate:
		return "immediate"
	}
	return fmt.Sprintf("CancelMode(%d)", int(m))
}

// GenerateRequest asks for a completion. PromptIDs wins over Prompt when set.
type GenerateRequest struct {
	ModelDir     string
	AdapterDir   string // "" for the base model alone
	PromptIDs    []int32
	Prompt       string
	MaxNewTokens int
	Temperature  float64 // 0 = greedy
	TopP         float64
	Seed         uint64
}

// GenerateResponse holds the new tokens only (not the prompt).
type GenerateResponse struct {
	IDs  []int32
	Text string
}

// Event is one of Started, Step, Eval, CheckpointSaved, Finished, Failed, Log.
type Event interface{ isEvent() }

// Started is the first event of a run.
type Started struct {
	TotalSteps      int64
	StartStep       int64  // > 0 when resumed
	ResumedFrom     string // the checkpoint resumed from
	Device          string
	TrainableParams int64
	TotalParams     int64
}

// Step reports one optimizer step.
type Step struct {
	Step              int64
	Epoch             float64
	Loss              float64
	GradNorm          float64
	LearningRate      float64
	TokensPerSecond   float64
	MeanTokenAccuracy float64
}

// Eval reports an evaluation on the held-out split.
type Eval struct {
	Step              int64
	Loss              float64
	MeanTokenAccuracy float64
}

// CheckpointSaved says a checkpoint is complete on disk and can be resumed.
type CheckpointSaved struct {
	Step int64
	Path string
}

// Finished is the last event of a successful run.
type Finished struct {
	AdapterDir string
	FinalLoss  float64
	Steps      int64
}

// Failed is the last event of a failed or cancelled run.
type Failed struct {
	Code    ErrorCode
	Message string
}

// Log is a status line for the user ("quantizing the base model to NF4").
// The same line is also written to the plugin's log.
type Log struct {
	Level   string // trace, debug, info, warn, error
	Message string
}

func (Started) isEvent()         {}
func (Step) isEvent()            {}
func (Eval) isEvent()            {}
func (CheckpointSaved) isEvent() {}
func (Finished) isEvent()        {}
func (Failed) isEvent()          {}
func (Log) isEvent()             {}

// ErrorCode classifies why a run failed, so the host can say what to do.
type ErrorCode string

const (
	CodeInvalidConfig ErrorCode = "invalid_config" // fix the config and rerun
	CodeOutOfMemory   ErrorCode = "out_of_memory"  // smaller batch/sequence, or another device
	CodeDevice        ErrorCode = "device"         // the device failed (driver, ECC, lost GPU)
	CodeCancelled     ErrorCode = "cancelled"      // stopped by the user
	CodeUnimplemented ErrorCode = "unimplemented"  // this plugin cannot do that yet
	CodeInternal      ErrorCode = "internal"       // a bug
)

// TrainError is an error with an ErrorCode. Runners return one to choose the
// code of their Failed event; the host returns one when a run ends in Failed.
type TrainError struct {
	Code    ErrorCode
	Message string
	// LastCheckpoint is filled in by the host: the newest checkpoint the run
	// reported (or the one it resumed from), "" if none.
	LastCheckpoint string
}

func (e *TrainError) Error() string {
	msg := fmt.Sprintf("%s: %s", e.Code, e.Message)
	if e.LastCheckpoint != "" {
		msg += fmt.Sprintf(" (last checkpoint: %s)", e.LastCheckpoint)
	}
	return msg
}

// Errorf returns a *TrainError with the given code.
func Errorf(code ErrorCode, format string, args ...any) error {
	return &TrainError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the ErrorCode of err: the code of a wrapped *TrainError,
// CodeCancelled for context.Canceled, CodeInternal otherwise.
func CodeOf(err error) ErrorCode {
	var te *TrainError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &te):
		return te.Code
	case errors.Is(err, context.Canceled):
		return CodeCancelled
	}
	return CodeInternal
}
